//! The expression tree of a parsed answer, exact rational evaluation (big integers, bounded
//! work) and numeric evaluation (complex `f64`) at a point.

use std::collections::BTreeSet;
use std::fmt;

use num_bigint::BigInt;
use num_complex::Complex64;
use num_integer::Integer;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// Work limits: anything beyond them is `undecided`, never a hang.
pub mod limits {
    /// Largest integer exponent computed exactly.
    pub const MAX_EXACT_EXPONENT: u64 = 20_000;
    /// Largest number of bits of an exact intermediate result.
    pub const MAX_BITS: u64 = 200_000;
    /// Largest n for which n! is computed exactly.
    pub const MAX_FACTORIAL: u64 = 5_000;
    /// Deepest nesting the parser accepts.
    pub const MAX_DEPTH: usize = 150;
    /// Longest answer string parsed (bytes).
    pub const MAX_ANSWER_BYTES: usize = 20_000;
    /// Largest number of nodes in one parsed answer.
    pub const MAX_NODES: usize = 20_000;
}

/// Why a value could not be computed exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum ExactError {
    /// Not a rational number (irrational, symbolic, complex, infinite or undefined).
    NotRational,
    /// The exact value would exceed the work budget.
    TooBig(&'static str),
}

/// An exact rational number over big integers, always in lowest terms with a positive
/// denominator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rat {
    num: BigInt,
    den: BigInt,
}

impl Rat {
    pub fn new(num: BigInt, den: BigInt) -> Option<Rat> {
        if den.is_zero() {
            return None;
        }
        let g = num.gcd(&den);
        let (mut n, mut d) = if g.is_one() || g.is_zero() { (num, den) } else { (num / &g, den / &g) };
        if d.is_negative() {
            n = -n;
            d = -d;
        }
        Some(Rat { num: n, den: d })
    }
    pub fn int(n: impl Into<BigInt>) -> Rat {
        Rat { num: n.into(), den: BigInt::one() }
    }
    pub fn zero() -> Rat {
        Rat::int(0)
    }
    pub fn one() -> Rat {
        Rat::int(1)
    }
    pub fn numer(&self) -> &BigInt {
        &self.num
    }
    pub fn denom(&self) -> &BigInt {
        &self.den
    }
    pub fn is_zero(&self) -> bool {
        self.num.is_zero()
    }
    pub fn is_integer(&self) -> bool {
        self.den.is_one()
    }
    pub fn is_negative(&self) -> bool {
        self.num.is_negative()
    }
    pub fn bits(&self) -> u64 {
        self.num.bits() + self.den.bits()
    }
    pub fn add(&self, o: &Rat) -> Rat {
        Rat::new(&self.num * &o.den + &o.num * &self.den, &self.den * &o.den).unwrap_or_else(Rat::zero)
    }
    pub fn neg(&self) -> Rat {
        Rat { num: -self.num.clone(), den: self.den.clone() }
    }
    pub fn sub(&self, o: &Rat) -> Rat {
        self.add(&o.neg())
    }
    pub fn mul(&self, o: &Rat) -> Rat {
        Rat::new(&self.num * &o.num, &self.den * &o.den).unwrap_or_else(Rat::zero)
    }
    pub fn recip(&self) -> Option<Rat> {
        Rat::new(self.den.clone(), self.num.clone())
    }
    pub fn div(&self, o: &Rat) -> Option<Rat> {
        Some(self.mul(&o.recip()?))
    }
    pub fn abs(&self) -> Rat {
        Rat { num: self.num.abs(), den: self.den.clone() }
    }
    /// Floor as a big integer.
    pub fn floor(&self) -> BigInt {
        self.num.div_floor(&self.den)
    }
    pub fn to_f64(&self) -> f64 {
        let (n, d) = (self.num.to_f64(), self.den.to_f64());
        match (n, d) {
            (Some(n), Some(d)) if n.is_finite() && d.is_finite() => n / d,
            _ => {
                // Scale both down to keep the quotient representable.
                let shift = self.num.bits().max(self.den.bits()).saturating_sub(900);
                let n = (&self.num >> shift).to_f64().unwrap_or(f64::NAN);
                let d = (&self.den >> shift).to_f64().unwrap_or(f64::NAN);
                if d == 0.0 { if n == 0.0 { f64::NAN } else { n.signum() * f64::INFINITY } } else { n / d }
            }
        }
    }
    /// `self^e` for an integer exponent, within the budget.
    pub fn powi(&self, e: &BigInt) -> Result<Rat, ExactError> {
        let mag = e.abs().to_u64().ok_or(ExactError::TooBig("exponent"))?;
        if self.is_zero() {
            return if e.is_negative() {
                Err(ExactError::NotRational)
            } else if mag == 0 {
                Ok(Rat::one())
            } else {
                Ok(Rat::zero())
            };
        }
        let base_bits = self.bits();
        let unit = self.num.abs().is_one() && self.den.is_one();
        if !unit && (mag > limits::MAX_EXACT_EXPONENT || base_bits.saturating_mul(mag) > limits::MAX_BITS) {
            return Err(ExactError::TooBig("exponent"));
        }
        let mag32 = if unit { (mag % 2) as u32 } else { mag as u32 };
        let r = Rat { num: self.num.pow(mag32), den: self.den.pow(mag32) };
        if e.is_negative() { r.recip().ok_or(ExactError::NotRational) } else { Ok(r) }
    }
    /// The exact `n`-th root when it is rational.
    pub fn root(&self, n: u32) -> Option<Rat> {
        if n == 0 {
            return None;
        }
        if self.is_negative() {
            if n.is_multiple_of(2) {
                return None;
            }
            return self.neg().root(n).map(|r| r.neg());
        }
        let rn = self.num.nth_root(n);
        let rd = self.den.nth_root(n);
        if rn.pow(n) == self.num && rd.pow(n) == self.den { Rat::new(rn, rd) } else { None }
    }
}

impl fmt::Display for Rat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den.is_one() { write!(f, "{}", self.num) } else { write!(f, "{}/{}", self.num, self.den) }
    }
}

/// Functions the parser knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Fun {
    Sin,
    Cos,
    Tan,
    Sec,
    Csc,
    Cot,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Ln,
    /// `log(base, x)`; plain `\log x` is base 10 as written by most models (and e by some:
    /// both sides of a comparison use the same convention, so only mixed forms differ).
    Log,
    Exp,
    Abs,
    Floor,
    Ceil,
    Factorial,
    Binom,
    Gcd,
    Lcm,
    Max,
    Min,
    /// An unknown function such as `f(x)`: compared as an arbitrary but fixed function.
    Named(String),
}

/// A relation between the parts of a chain such as `a < b \le c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Approx,
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// An exact number (integer or fraction written without a decimal point).
    Num(Rat),
    /// A number written with a decimal point: its value and how many places were written
    /// (a model may have rounded it).
    Dec(Rat, u32),
    Sym(String),
    Pi,
    E,
    I,
    Inf,
    Add(Vec<Node>),
    Mul(Vec<Node>),
    Neg(Box<Node>),
    Div(Box<Node>, Box<Node>),
    Pow(Box<Node>, Box<Node>),
    Func(Fun, Vec<Node>),
    /// `a \pm b` (`a` is zero for a leading `\pm`).
    PlusMinus(Box<Node>, Box<Node>),
    Percent(Box<Node>),
    /// `(a, b, …)`: an ordered tuple (or an open interval when it has two ends).
    Tuple(Vec<Node>),
    /// `\{a, b\}` or a bare list `a, b`: order-free.
    Set(Vec<Node>),
    Interval {
        lo: Box<Node>,
        hi: Box<Node>,
        lo_closed: bool,
        hi_closed: bool,
    },
    Union(Vec<Node>),
    Matrix(Vec<Vec<Node>>),
    /// A chain of relations: `parts[0] ops[0] parts[1] ops[1] …`.
    Rel(Vec<Node>, Vec<RelOp>),
    /// A plain-text answer, normalised (lower case, single spaces).
    Text(String),
}

impl Node {
    pub fn num(n: i64) -> Node {
        Node::Num(Rat::int(n))
    }

    /// The free variables (symbols) of a node, with unknown function names.
    pub fn symbols(&self, out: &mut BTreeSet<String>) {
        match self {
            Node::Sym(s) => {
                out.insert(s.clone());
            }
            Node::Func(f, args) => {
                if let Fun::Named(n) = f {
                    out.insert(format!("{n}()"));
                }
                args.iter().for_each(|a| a.symbols(out));
            }
            _ => self.children().for_each(|c| c.symbols(out)),
        }
    }

    /// The direct children of a node.
    pub fn children(&self) -> Box<dyn Iterator<Item = &Node> + '_> {
        match self {
            Node::Add(v) | Node::Mul(v) | Node::Tuple(v) | Node::Set(v) | Node::Union(v) | Node::Func(_, v) => {
                Box::new(v.iter())
            }
            Node::Rel(v, _) => Box::new(v.iter()),
            Node::Neg(a) | Node::Percent(a) => Box::new(std::iter::once(&**a)),
            Node::Div(a, b) | Node::Pow(a, b) | Node::PlusMinus(a, b) => {
                Box::new(std::iter::once(&**a).chain(std::iter::once(&**b)))
            }
            Node::Interval { lo, hi, .. } => Box::new(std::iter::once(&**lo).chain(std::iter::once(&**hi))),
            Node::Matrix(rows) => Box::new(rows.iter().flatten()),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// Number of nodes in the tree.
    pub fn size(&self) -> usize {
        1 + self.children().map(Node::size).sum::<usize>()
    }

    /// Whether this is a scalar expression (not a structure, relation or text).
    pub fn is_scalar(&self) -> bool {
        match self {
            Node::Tuple(_)
            | Node::Set(_)
            | Node::Interval { .. }
            | Node::Union(_)
            | Node::Matrix(_)
            | Node::Rel(..)
            | Node::Text(_) => false,
            _ => self.children().all(Node::is_scalar),
        }
    }

    pub fn contains_percent(&self) -> bool {
        matches!(self, Node::Percent(_)) || self.children().any(Node::contains_percent)
    }

    /// The node with every `x%` replaced by `x`.
    pub fn strip_percent(&self) -> Node {
        match self {
            Node::Percent(a) => a.strip_percent(),
            _ => self.map_children(&|c| c.strip_percent()),
        }
    }

    pub fn contains_pm(&self) -> bool {
        matches!(self, Node::PlusMinus(..)) || self.children().any(Node::contains_pm)
    }

    /// Rebuilds a node with `f` applied to each child.
    pub fn map_children(&self, f: &dyn Fn(&Node) -> Node) -> Node {
        let v = |xs: &Vec<Node>| xs.iter().map(f).collect::<Vec<_>>();
        let b = |x: &Node| Box::new(f(x));
        match self {
            Node::Add(xs) => Node::Add(v(xs)),
            Node::Mul(xs) => Node::Mul(v(xs)),
            Node::Tuple(xs) => Node::Tuple(v(xs)),
            Node::Set(xs) => Node::Set(v(xs)),
            Node::Union(xs) => Node::Union(v(xs)),
            Node::Func(fun, xs) => Node::Func(fun.clone(), v(xs)),
            Node::Rel(xs, ops) => Node::Rel(v(xs), ops.clone()),
            Node::Neg(a) => Node::Neg(b(a)),
            Node::Percent(a) => Node::Percent(b(a)),
            Node::Div(x, y) => Node::Div(b(x), b(y)),
            Node::Pow(x, y) => Node::Pow(b(x), b(y)),
            Node::PlusMinus(x, y) => Node::PlusMinus(b(x), b(y)),
            Node::Interval { lo, hi, lo_closed, hi_closed } => {
                Node::Interval { lo: b(lo), hi: b(hi), lo_closed: *lo_closed, hi_closed: *hi_closed }
            }
            Node::Matrix(rows) => Node::Matrix(rows.iter().map(v).collect()),
            other => other.clone(),
        }
    }

    /// Expands `a \pm b` into its (at most 16) variants.
    pub fn expand_pm(&self) -> Vec<Node> {
        fn go(n: &Node, sign: &mut std::slice::Iter<'_, bool>) -> Node {
            match n {
                Node::PlusMinus(a, b) => {
                    let a2 = go(a, sign);
                    let b2 = go(b, sign);
                    if *sign.next().unwrap_or(&true) {
                        Node::Add(vec![a2, b2])
                    } else {
                        Node::Add(vec![a2, Node::Neg(Box::new(b2))])
                    }
                }
                _ => n.map_children(&|c| c.clone()).with_children_mapped(sign, go),
            }
        }
        let mut count = 0usize;
        fn count_pm(n: &Node, c: &mut usize) {
            if matches!(n, Node::PlusMinus(..)) {
                *c += 1;
            }
            n.children().for_each(|x| count_pm(x, c));
        }
        count_pm(self, &mut count);
        if count == 0 || count > 4 {
            return vec![self.clone()];
        }
        (0..(1u32 << count))
            .map(|mask| {
                let signs: Vec<bool> = (0..count).map(|k| mask & (1 << k) == 0).collect();
                go(self, &mut signs.iter())
            })
            .collect()
    }

    fn with_children_mapped(
        self,
        sign: &mut std::slice::Iter<'_, bool>,
        go: fn(&Node, &mut std::slice::Iter<'_, bool>) -> Node,
    ) -> Node {
        // Children are visited in order so each `\pm` consumes its own sign.
        let mut out = self;
        let mut_children = |n: &mut Node, sign: &mut std::slice::Iter<'_, bool>| match n {
            Node::Add(xs)
            | Node::Mul(xs)
            | Node::Tuple(xs)
            | Node::Set(xs)
            | Node::Union(xs)
            | Node::Func(_, xs)
            | Node::Rel(xs, _) => xs.iter_mut().for_each(|x| *x = go(x, sign)),
            Node::Neg(a) | Node::Percent(a) => **a = go(a, sign),
            Node::Div(x, y) | Node::Pow(x, y) | Node::PlusMinus(x, y) => {
                **x = go(x, sign);
                **y = go(y, sign);
            }
            Node::Interval { lo, hi, .. } => {
                **lo = go(lo, sign);
                **hi = go(hi, sign);
            }
            Node::Matrix(rows) => rows.iter_mut().flatten().for_each(|x| *x = go(x, sign)),
            _ => {}
        };
        mut_children(&mut out, sign);
        out
    }
}

/// Exact rational value of a scalar node, when it has one.
pub fn exact(n: &Node) -> Result<Rat, ExactError> {
    use ExactError::*;
    let r = match n {
        Node::Num(r) | Node::Dec(r, _) => r.clone(),
        Node::Neg(a) => exact(a)?.neg(),
        Node::Add(xs) => {
            let mut acc = Rat::zero();
            for x in xs {
                acc = acc.add(&exact(x)?);
            }
            acc
        }
        Node::Mul(xs) => {
            let mut acc = Rat::one();
            let mut err = None;
            for x in xs {
                match exact(x) {
                    Ok(v) => acc = acc.mul(&v),
                    Err(e) => {
                        err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = err {
                return Err(e);
            }
            acc
        }
        Node::Div(a, b) => exact(a)?.div(&exact(b)?).ok_or(NotRational)?,
        Node::Percent(a) => exact(a)?.div(&Rat::int(100)).ok_or(NotRational)?,
        Node::Pow(b, e) => {
            let ev = exact(e)?;
            let bv = exact(b)?;
            if ev.is_integer() {
                bv.powi(ev.numer())?
            } else {
                // Rational exponent p/q: rational only when the q-th root is.
                let q = ev.denom().to_u32().ok_or(NotRational)?;
                if q > 64 {
                    return Err(NotRational);
                }
                let root = bv.root(q).ok_or(NotRational)?;
                root.powi(ev.numer())?
            }
        }
        Node::Func(f, args) => exact_func(f, args)?,
        _ => return Err(NotRational),
    };
    if r.bits() > limits::MAX_BITS {
        return Err(TooBig("number too large"));
    }
    Ok(r)
}

fn exact_int(n: &Node) -> Result<BigInt, ExactError> {
    let r = exact(n)?;
    if r.is_integer() { Ok(r.numer().clone()) } else { Err(ExactError::NotRational) }
}

fn exact_func(f: &Fun, args: &[Node]) -> Result<Rat, ExactError> {
    use ExactError::*;
    let one = |i: usize| args.get(i).ok_or(NotRational);
    Ok(match f {
        Fun::Abs => exact(one(0)?)?.abs(),
        Fun::Floor => Rat::int(exact(one(0)?)?.floor()),
        Fun::Ceil => Rat::int(-(exact(one(0)?)?.neg().floor())),
        Fun::Factorial => {
            let n = exact_int(one(0)?)?;
            if n.is_negative() {
                return Err(NotRational);
            }
            let n = n.to_u64().filter(|&n| n <= limits::MAX_FACTORIAL).ok_or(TooBig("factorial"))?;
            let mut acc = BigInt::one();
            for k in 2..=n {
                acc *= k;
            }
            Rat::int(acc)
        }
        Fun::Binom => {
            let n = exact_int(one(0)?)?;
            let k = exact_int(one(1)?)?;
            if k.is_negative() || n.is_negative() || k > n {
                return Ok(Rat::zero());
            }
            let k = k.to_u64().filter(|&k| k <= limits::MAX_FACTORIAL).ok_or(TooBig("binomial"))?;
            let mut acc = BigInt::one();
            for j in 0..k {
                acc = acc * (&n - j) / (j + 1);
            }
            Rat::int(acc)
        }
        Fun::Gcd | Fun::Lcm => {
            let mut acc: Option<BigInt> = None;
            for a in args {
                let v = exact_int(a)?;
                acc = Some(match acc {
                    None => v.abs(),
                    Some(p) => {
                        if *f == Fun::Gcd {
                            p.gcd(&v)
                        } else {
                            p.lcm(&v)
                        }
                    }
                });
            }
            Rat::int(acc.ok_or(NotRational)?)
        }
        Fun::Max | Fun::Min => {
            let mut best: Option<Rat> = None;
            for a in args {
                let v = exact(a)?;
                best = Some(match best {
                    None => v,
                    Some(b) => {
                        let bigger = v.sub(&b).is_negative() == (*f == Fun::Min);
                        if bigger { v } else { b }
                    }
                });
            }
            best.ok_or(NotRational)?
        }
        Fun::Exp | Fun::Sin | Fun::Tan | Fun::Asin | Fun::Atan | Fun::Sinh | Fun::Tanh => {
            let v = exact(one(0)?)?;
            if v.is_zero() && !matches!(f, Fun::Exp) {
                Rat::zero()
            } else if v.is_zero() {
                Rat::one()
            } else {
                return Err(NotRational);
            }
        }
        Fun::Cos | Fun::Cosh | Fun::Sec if exact(one(0)?)?.is_zero() => Rat::one(),
        Fun::Ln if exact(one(0)?)? == Rat::one() => Rat::zero(),
        Fun::Log => {
            // log_b(x) is rational when x = b^k for a small integer k (or 1/b^k).
            let b = exact(one(0)?)?;
            let x = exact(one(1)?)?;
            if b.is_negative() || b.is_zero() || b == Rat::one() || x.is_negative() || x.is_zero() {
                return Err(NotRational);
            }
            if x == Rat::one() {
                return Ok(Rat::zero());
            }
            let mut p = b.clone();
            for k in 1..=256i64 {
                if p == x {
                    return Ok(Rat::int(k));
                }
                if p.recip().as_ref() == Some(&x) {
                    return Ok(Rat::int(-k));
                }
                p = p.mul(&b);
                if p.bits() > x.bits() + b.bits() + 8 {
                    break;
                }
            }
            return Err(NotRational);
        }
        _ => return Err(NotRational),
    })
}

/// Values of the variables at one evaluation point.
pub struct Point<'a> {
    pub names: &'a [String],
    pub values: &'a [Complex64],
}

impl Point<'_> {
    fn get(&self, name: &str) -> Option<Complex64> {
        self.names.iter().position(|n| n == name).map(|i| self.values[i])
    }
}

/// A deterministic pseudo-random function for an unknown function name: `f(x)` and `f(y)`
/// agree exactly when their arguments do.
fn named_fn(name: &str, args: &[Complex64]) -> Complex64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let a = 0.5 + (h % 1000) as f64 / 997.0;
    let c = 0.3 + ((h >> 20) % 1000) as f64 / 1999.0;
    let mut acc = Complex64::new(c, 0.0);
    for (k, x) in args.iter().enumerate() {
        acc += (x * a + (k as f64 + 1.0) * c).sin() + x * x * (0.1 * a);
    }
    acc
}

fn gamma_real(x: f64) -> f64 {
    // Lanczos approximation (g = 7, n = 9), good to ~1e-13 relative on the positive axis.
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        std::f64::consts::PI / ((std::f64::consts::PI * x).sin() * gamma_real(1.0 - x))
    } else {
        let x = x - 1.0;
        let mut a = G[0];
        let t = x + 7.5;
        for (i, g) in G.iter().enumerate().skip(1) {
            a += g / (x + i as f64);
        }
        (2.0 * std::f64::consts::PI).sqrt() * t.powf(x + 0.5) * (-t).exp() * a
    }
}

/// Numeric value of a scalar node at a point; `None` for structures or undefined values.
pub fn eval(n: &Node, pt: &Point<'_>) -> Option<Complex64> {
    let c = |x: f64| Some(Complex64::new(x, 0.0));
    match n {
        Node::Num(r) | Node::Dec(r, _) => c(r.to_f64()),
        Node::Sym(s) => pt.get(s),
        Node::Pi => c(std::f64::consts::PI),
        Node::E => c(std::f64::consts::E),
        Node::I => Some(Complex64::new(0.0, 1.0)),
        Node::Inf => c(f64::INFINITY),
        Node::Neg(a) => eval(a, pt).map(|v| -v),
        Node::Percent(a) => eval(a, pt).map(|v| v / 100.0),
        Node::Add(xs) => {
            let mut acc = Complex64::new(0.0, 0.0);
            for x in xs {
                acc += eval(x, pt)?;
            }
            Some(acc)
        }
        Node::Mul(xs) => {
            let mut acc = Complex64::new(1.0, 0.0);
            for x in xs {
                acc *= eval(x, pt)?;
            }
            Some(acc)
        }
        Node::Div(a, b) => {
            let d = eval(b, pt)?;
            if d == Complex64::new(0.0, 0.0) {
                return None;
            }
            Some(eval(a, pt)? / d)
        }
        Node::Pow(b, e) => {
            let bv = eval(b, pt)?;
            let ev = eval(e, pt)?;
            Some(cpow(bv, ev, e))
        }
        Node::Func(f, args) => {
            let vals: Option<Vec<Complex64>> = args.iter().map(|a| eval(a, pt)).collect();
            let vals = vals?;
            let x = *vals.first()?;
            let real = |v: Complex64| if v.im.abs() <= 1e-12 * (1.0 + v.re.abs()) { Some(v.re) } else { None };
            Some(match f {
                Fun::Sin => x.sin(),
                Fun::Cos => x.cos(),
                Fun::Tan => x.tan(),
                Fun::Sec => 1.0 / x.cos(),
                Fun::Csc => 1.0 / x.sin(),
                Fun::Cot => 1.0 / x.tan(),
                Fun::Asin => x.asin(),
                Fun::Acos => x.acos(),
                Fun::Atan => x.atan(),
                Fun::Sinh => x.sinh(),
                Fun::Cosh => x.cosh(),
                Fun::Tanh => x.tanh(),
                Fun::Ln => x.ln(),
                Fun::Log => {
                    let y = *vals.get(1)?;
                    y.ln() / x.ln()
                }
                Fun::Exp => x.exp(),
                Fun::Abs => Complex64::new(x.norm(), 0.0),
                Fun::Floor => Complex64::new(real(x)?.floor(), 0.0),
                Fun::Ceil => Complex64::new(real(x)?.ceil(), 0.0),
                Fun::Factorial => {
                    let r = real(x)?;
                    if r < 0.0 && r.fract() == 0.0 {
                        return None;
                    }
                    Complex64::new(gamma_real(r + 1.0), 0.0)
                }
                Fun::Binom => {
                    let (nn, k) = (real(x)?, real(*vals.get(1)?)?);
                    let g = |v: f64| gamma_real(v + 1.0);
                    Complex64::new(g(nn) / (g(k) * g(nn - k)), 0.0)
                }
                Fun::Gcd | Fun::Lcm => return None,
                Fun::Max | Fun::Min => {
                    let mut best = real(x)?;
                    for v in &vals[1..] {
                        let r = real(*v)?;
                        best = if *f == Fun::Max { best.max(r) } else { best.min(r) };
                    }
                    Complex64::new(best, 0.0)
                }
                Fun::Named(name) => named_fn(name, &vals),
            })
        }
        _ => None,
    }
}

fn cpow(b: Complex64, e: Complex64, e_node: &Node) -> Complex64 {
    // Real base and real exponent: keep real results where mathematicians expect them
    // (odd roots of negatives, integer powers).
    if b.im == 0.0 && e.im == 0.0 {
        if e.re.fract() == 0.0 && e.re.abs() <= 1e6 {
            return Complex64::new(b.re.powi(e.re as i32), 0.0);
        }
        if b.re >= 0.0 {
            return Complex64::new(b.re.powf(e.re), 0.0);
        }
        if let Ok(r) = exact(e_node)
            && let Some(d) = r.denom().to_u64()
            && d % 2 == 1
        {
            let mag = (-b.re).powf(e.re);
            let odd_num = r.numer().is_odd();
            return Complex64::new(if odd_num { -mag } else { mag }, 0.0);
        }
    }
    if b == Complex64::new(0.0, 0.0) {
        return if e.re > 0.0 { b } else { Complex64::new(f64::NAN, 0.0) };
    }
    b.powc(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rationals() {
        let a = Rat::new(6.into(), (-4).into()).unwrap();
        assert_eq!(a.to_string(), "-3/2");
        assert_eq!(a.powi(&BigInt::from(-2)).unwrap().to_string(), "4/9");
        assert_eq!(Rat::new(27.into(), 8.into()).unwrap().root(3).unwrap().to_string(), "3/2");
        assert!(Rat::int(2).root(2).is_none());
        assert_eq!(Rat::int(-8).root(3).unwrap().to_string(), "-2");
        assert!(Rat::int(10).powi(&BigInt::from(10_000_000_000u64)).is_err());
        assert!(Rat::int(1).powi(&BigInt::from(10_000_000_000u64)).is_ok());
    }

    #[test]
    fn factorials_exact() {
        let f = |n| exact(&Node::Func(Fun::Factorial, vec![Node::num(n)])).unwrap();
        assert_eq!(f(5).to_string(), "120");
        assert_ne!(f(2004), f(2006));
        assert!(exact(&Node::Func(Fun::Factorial, vec![Node::num(1_000_000)])).is_err());
    }

    #[test]
    fn pm_expansion() {
        let n = Node::PlusMinus(Box::new(Node::num(1)), Box::new(Node::num(2)));
        let v: Vec<_> = n.expand_pm().iter().map(|x| exact(x).unwrap().to_string()).collect();
        assert_eq!(v, vec!["3", "-1"]);
    }
}
