//! Equivalence of two parsed answers.
//!
//! Scalars: exact big-rational comparison when both sides are rational; otherwise numeric
//! comparison in complex `f64` at a constant point (no variables) or at many deterministic
//! pseudo-random points (Schwartz–Zippel style), with a relative tolerance of 1e-9. A side
//! written as a decimal with `k` places is accepted within half a unit of its last place
//! against an exact other side (the model rounded). Variables are sampled on positive reals,
//! so identities that hold for positive values (`\sqrt{1/n} = 1/\sqrt{n}`, `\sqrt{x^2} = x`)
//! are accepted: answers are compared as expressions on the domain where both are defined
//! and real, which is what graders of competition answers expect.
//!
//! Structures: sets order-free (with `\pm` expanded), tuples ordered, intervals with their
//! open/closed ends, unions order-free, matrices by shape and entries, equations on both
//! sides (`L1 - R1` proportional to `L2 - R2`, so `y=2x+1` ≡ `y=1+2x` ≡ `2x-y+1=0`),
//! inequalities the same with a positive factor, `x = 5` against `5` when the left side is
//! a bare name, inequalities against intervals, plain text case- and space-insensitively.

use std::collections::BTreeSet;

use num_complex::Complex64;

use super::expr::{ExactError, Fun, Node, Point, RelOp, eval, exact};

/// A three-valued answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Tri {
    True,
    False,
    /// Could not decide within the work budget, or the value is undefined.
    Unknown(String),
}

impl Tri {
    fn from_bool(b: bool) -> Tri {
        if b { Tri::True } else { Tri::False }
    }
    pub fn is_true(&self) -> bool {
        *self == Tri::True
    }
}

const REL_TOL: f64 = 1e-9;
const POINTS: usize = 12;
const MAX_PAIRS: usize = 4096;

/// Compares a gold answer with a predicted one.
pub fn equivalent(gold: &Node, pred: &Node) -> Tri {
    let mut budget = Budget { pairs: 0 };
    eq(gold, pred, &mut budget)
}

struct Budget {
    pairs: usize,
}

fn unwrap_single(n: &Node) -> &Node {
    match n {
        Node::Set(v) | Node::Tuple(v) if v.len() == 1 => unwrap_single(&v[0]),
        _ => n,
    }
}

/// A set's elements with `\pm` expanded and nested bare lists flattened.
fn set_items(v: &[Node]) -> Vec<Node> {
    let mut out = Vec::new();
    for x in v {
        match x {
            Node::Set(inner) => out.extend(set_items(inner)),
            x if x.is_scalar() && x.contains_pm() => out.extend(x.expand_pm()),
            x => out.push(x.clone()),
        }
    }
    out
}

fn pm_to_set(n: &Node) -> Option<Node> {
    if n.is_scalar() && n.contains_pm() {
        let v = n.expand_pm();
        if v.len() > 1 {
            return Some(Node::Set(v));
        }
    }
    None
}

fn eq(g: &Node, p: &Node, b: &mut Budget) -> Tri {
    b.pairs += 1;
    if b.pairs > MAX_PAIRS {
        return Tri::Unknown("budget: too many comparisons".into());
    }
    let (g, p) = (unwrap_single(g), unwrap_single(p));
    if g == p {
        return Tri::True;
    }
    if g.contains_percent() || p.contains_percent() {
        let first = eq_inner(g, p, b);
        if first.is_true() {
            return first;
        }
        let second = eq_inner(&g.strip_percent(), &p.strip_percent(), b);
        return match (first, second) {
            (_, Tri::True) => Tri::True,
            (Tri::Unknown(r), _) | (_, Tri::Unknown(r)) => Tri::Unknown(r),
            _ => Tri::False,
        };
    }
    eq_inner(g, p, b)
}

fn contains_matrix(n: &Node) -> bool {
    matches!(n, Node::Matrix(_)) || n.children().any(contains_matrix)
}

/// Sums, differences, scalar multiples and products of matrices, entry by entry.
fn matrix_value(n: &Node) -> Option<Vec<Vec<Node>>> {
    match n {
        Node::Matrix(rows) => Some(rows.clone()),
        Node::Neg(a) => {
            let m = matrix_value(a)?;
            Some(m.into_iter().map(|r| r.into_iter().map(|x| Node::Neg(Box::new(x))).collect()).collect())
        }
        Node::Add(xs) => {
            let ms: Vec<Vec<Vec<Node>>> = xs.iter().map(matrix_value).collect::<Option<_>>()?;
            let first = ms.first()?;
            let shape: Vec<usize> = first.iter().map(Vec::len).collect();
            if ms.iter().any(|m| m.iter().map(Vec::len).collect::<Vec<_>>() != shape) {
                return None;
            }
            Some(
                (0..first.len())
                    .map(|i| (0..shape[i]).map(|j| Node::Add(ms.iter().map(|m| m[i][j].clone()).collect())).collect())
                    .collect(),
            )
        }
        Node::Mul(xs) => {
            let mut acc: Option<Vec<Vec<Node>>> = None;
            let mut scalars = Vec::new();
            for x in xs {
                if x.is_scalar() {
                    scalars.push(x.clone());
                    continue;
                }
                let m = matrix_value(x)?;
                acc = Some(match acc {
                    None => m,
                    Some(a) => {
                        let inner = a.first()?.len();
                        if m.len() != inner || m.iter().any(|r| r.len() != m[0].len()) {
                            return None;
                        }
                        let cols = m.first()?.len();
                        a.iter()
                            .map(|row| {
                                (0..cols)
                                    .map(|j| {
                                        Node::Add(
                                            (0..inner)
                                                .map(|k| Node::Mul(vec![row[k].clone(), m[k][j].clone()]))
                                                .collect(),
                                        )
                                    })
                                    .collect()
                            })
                            .collect()
                    }
                });
            }
            let m = acc?;
            if scalars.is_empty() {
                return Some(m);
            }
            Some(
                m.into_iter()
                    .map(|r| r.into_iter().map(|x| Node::Mul(scalars.iter().cloned().chain([x]).collect())).collect())
                    .collect(),
            )
        }
        _ => None,
    }
}

fn eq_inner(g: &Node, p: &Node, b: &mut Budget) -> Tri {
    if !matches!(g, Node::Matrix(_))
        && contains_matrix(g)
        && g.size() < 2000
        && let Some(m) = matrix_value(g)
    {
        return eq(&Node::Matrix(m), p, b);
    }
    if !matches!(p, Node::Matrix(_))
        && contains_matrix(p)
        && p.size() < 2000
        && let Some(m) = matrix_value(p)
    {
        return eq(g, &Node::Matrix(m), b);
    }
    if let Some(s) = pm_to_set(g) {
        return eq(&s, p, b);
    }
    if let Some(s) = pm_to_set(p) {
        return eq(g, &s, b);
    }
    use Node::*;
    match (g, p) {
        (Text(_), _) | (_, Text(_)) => Tri::from_bool(match (as_text(g), as_text(p)) {
            (Some(a), Some(c)) => a.replace(' ', "") == c.replace(' ', ""),
            _ => false,
        }),
        (Rel(..), Rel(..)) => rel_eq(g, p, b),
        (Rel(..), _) => rel_vs_value(g, p, b),
        (_, Rel(..)) => rel_vs_value(p, g, b),
        (Set(a), Set(c)) => set_eq(&set_items(a), &set_items(c), b),
        (Union(a), Union(c)) => set_eq(a, c, b),
        (Tuple(a), Tuple(c)) | (Set(a), Tuple(c)) | (Tuple(a), Set(c)) => seq_eq(a, c, b),
        (Interval { .. }, Interval { .. }) => interval_eq(g, p, b),
        (Tuple(v), Interval { .. }) if v.len() == 2 => interval_eq(&open_interval(v), p, b),
        (Interval { .. }, Tuple(v)) if v.len() == 2 => interval_eq(g, &open_interval(v), b),
        (Matrix(a), Matrix(c)) => {
            if a.len() != c.len() || a.iter().zip(c).any(|(x, y)| x.len() != y.len()) {
                return Tri::False;
            }
            let fa: Vec<Node> = a.iter().flatten().cloned().collect();
            let fc: Vec<Node> = c.iter().flatten().cloned().collect();
            seq_eq(&fa, &fc, b)
        }
        // A column (n×1) or row (1×n) vector against an n-tuple or a bare list, in order.
        (Matrix(a), Tuple(c) | Set(c)) | (Tuple(c) | Set(c), Matrix(a))
            if a.iter().all(|r| r.len() == 1) || a.len() == 1 =>
        {
            let fa: Vec<Node> = a.iter().flatten().cloned().collect();
            seq_eq(&fa, c, b)
        }
        _ if g.is_scalar() && p.is_scalar() => scalar_eq(g, p),
        _ => Tri::False,
    }
}

fn as_text(n: &Node) -> Option<String> {
    match n {
        Node::Text(t) => Some(t.clone()),
        Node::Sym(s) => Some(s.to_lowercase()),
        Node::E => Some("e".into()),
        Node::I => Some("i".into()),
        Node::Num(r) => Some(r.to_string()),
        Node::Mul(v) => v.iter().map(as_text).collect::<Option<Vec<_>>>().map(|w| w.join("")),
        _ => None,
    }
}

fn open_interval(v: &[Node]) -> Node {
    Node::Interval { lo: Box::new(v[0].clone()), hi: Box::new(v[1].clone()), lo_closed: false, hi_closed: false }
}

fn seq_eq(a: &[Node], c: &[Node], b: &mut Budget) -> Tri {
    if a.len() != c.len() {
        return Tri::False;
    }
    let mut unknown = None;
    for (x, y) in a.iter().zip(c) {
        match eq(x, y, b) {
            Tri::True => {}
            Tri::False => return Tri::False,
            Tri::Unknown(r) => unknown = Some(r),
        }
    }
    unknown.map_or(Tri::True, Tri::Unknown)
}

fn dedup(v: &[Node]) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    for x in v {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

fn set_eq(a: &[Node], c: &[Node], b: &mut Budget) -> Tri {
    let (a, c) = (dedup(a), dedup(c));
    if a.len() * c.len() > MAX_PAIRS {
        return Tri::Unknown("budget: sets too large".into());
    }
    let mut used = vec![false; c.len()];
    let mut unknown = None;
    let mut matched_all = true;
    for x in &a {
        let mut found = false;
        for (j, y) in c.iter().enumerate() {
            if used[j] {
                continue;
            }
            match eq(x, y, b) {
                Tri::True => {
                    used[j] = true;
                    found = true;
                    break;
                }
                Tri::Unknown(r) => unknown = Some(r),
                Tri::False => {}
            }
        }
        if !found {
            matched_all = false;
        }
    }
    // Equal values written twice on one side (`2, 2.0`) were matched once each.
    let all_used = used.iter().all(|u| *u);
    if matched_all && all_used {
        Tri::True
    } else if matched_all && a.len() != c.len() {
        // Duplicates by value on the other side: check the other direction.
        let back = c.iter().all(|y| a.iter().any(|x| eq(x, y, b).is_true()));
        Tri::from_bool(back)
    } else {
        unknown.map_or(Tri::False, Tri::Unknown)
    }
}

fn interval_eq(g: &Node, p: &Node, b: &mut Budget) -> Tri {
    match (g, p) {
        (
            Node::Interval { lo, hi, lo_closed, hi_closed },
            Node::Interval { lo: lo2, hi: hi2, lo_closed: lc2, hi_closed: hc2 },
        ) => {
            if lo_closed != lc2 || hi_closed != hc2 {
                return Tri::False;
            }
            seq_eq(&[(**lo).clone(), (**hi).clone()], &[(**lo2).clone(), (**hi2).clone()], b)
        }
        _ => Tri::False,
    }
}

/// Whether a node is a bare name that an answer may be assigned to (`x`, `a_3`, `f(x)`,
/// `(p, q)`, `|AB|`, `AB`, `V_1:V_2`).
fn is_name(n: &Node) -> bool {
    match n {
        Node::Sym(_) => true,
        Node::Func(Fun::Named(_), args) => args.iter().all(|a| a.is_scalar()),
        Node::Func(Fun::Abs, a) => a.iter().all(is_name),
        Node::Tuple(v) => v.iter().all(is_name),
        Node::Mul(v) => v.iter().all(|x| matches!(x, Node::Sym(_))),
        Node::Div(a, c) => is_name(a) && is_name(c),
        _ => false,
    }
}

/// A relation chain with `\approx` resolved and `a = b = … = z` reduced to its named left
/// side and final value.
fn normalize_rel(n: &Node) -> Option<(Vec<Node>, Vec<RelOp>)> {
    let Node::Rel(parts, ops) = n else { return None };
    let mut parts = parts.clone();
    let mut ops = ops.clone();
    if let Some(k) = ops.iter().position(|o| *o == RelOp::Approx) {
        if k > 0 && ops[..k].iter().all(|o| *o == RelOp::Eq) {
            ops.truncate(k);
            parts.truncate(k + 1);
        } else {
            ops.iter_mut().for_each(|o| {
                if *o == RelOp::Approx {
                    *o = RelOp::Eq
                }
            });
        }
    }
    if ops.len() > 1 && ops.iter().all(|o| *o == RelOp::Eq) {
        let last = parts.pop()?;
        let lhs = parts.iter().rev().find(|x| is_name(x)).cloned().unwrap_or_else(|| parts[0].clone());
        return Some((vec![lhs, last], vec![RelOp::Eq]));
    }
    Some((parts, ops))
}

fn diff(a: &Node, c: &Node) -> Node {
    Node::Add(vec![a.clone(), Node::Neg(Box::new(c.clone()))])
}

fn rel_eq(g: &Node, p: &Node, b: &mut Budget) -> Tri {
    let (Some((gp, go)), Some((pp, po))) = (normalize_rel(g), normalize_rel(p)) else { return Tri::False };
    if go.len() == 1 && po.len() == 1 {
        let (g_op, p_op) = (go[0], po[0]);
        if g_op == RelOp::Eq && p_op == RelOp::Eq {
            let direct = seq_eq(&gp, &pp, b);
            if direct.is_true() {
                return direct;
            }
            let swapped = seq_eq(&gp, &[pp[1].clone(), pp[0].clone()], b);
            if swapped.is_true() {
                return swapped;
            }
            if !gp.iter().chain(&pp).all(Node::is_scalar) {
                return Tri::False;
            }
            return proportional(&diff(&gp[0], &gp[1]), &diff(&pp[0], &pp[1]), false);
        }
        if g_op == RelOp::Ne && p_op == RelOp::Ne {
            return proportional(&diff(&gp[0], &gp[1]), &diff(&pp[0], &pp[1]), false);
        }
        let canon = |parts: &[Node], op: RelOp| -> Option<(Node, bool)> {
            match op {
                RelOp::Lt => Some((diff(&parts[0], &parts[1]), true)),
                RelOp::Le => Some((diff(&parts[0], &parts[1]), false)),
                RelOp::Gt => Some((diff(&parts[1], &parts[0]), true)),
                RelOp::Ge => Some((diff(&parts[1], &parts[0]), false)),
                _ => None,
            }
        };
        return match (canon(&gp, g_op), canon(&pp, p_op)) {
            (Some((d1, s1)), Some((d2, s2))) if s1 == s2 => proportional(&d1, &d2, true),
            _ => Tri::False,
        };
    }
    if go == po && seq_eq(&gp, &pp, b).is_true() {
        return Tri::True;
    }
    match (rel_to_interval(&gp, &go), rel_to_interval(&pp, &po)) {
        (Some(a), Some(c)) => eq(&a, &c, b),
        _ => Tri::False,
    }
}

fn no_symbols(n: &Node) -> bool {
    let mut s = BTreeSet::new();
    n.symbols(&mut s);
    s.is_empty()
}

/// `a < x \le b`, `x > a`, `a \le x` as an interval of the named middle.
fn rel_to_interval(parts: &[Node], ops: &[RelOp]) -> Option<Node> {
    let up = |o: &RelOp| matches!(o, RelOp::Lt | RelOp::Le);
    let down = |o: &RelOp| matches!(o, RelOp::Gt | RelOp::Ge);
    let closed = |o: &RelOp| matches!(o, RelOp::Le | RelOp::Ge);
    let iv = |lo: &Node, hi: &Node, lc: bool, hc: bool| Node::Interval {
        lo: Box::new(lo.clone()),
        hi: Box::new(hi.clone()),
        lo_closed: lc,
        hi_closed: hc,
    };
    let neg_inf = Node::Neg(Box::new(Node::Inf));
    match (parts, ops) {
        // a \le |z| \le c with 0 \le a: two intervals.
        ([a, Node::Func(Fun::Abs, z), c], [o1, o2])
            if up(o1) && up(o2) && z.len() == 1 && is_name(&z[0]) && exact(a).is_ok_and(|r| !r.is_negative()) =>
        {
            let neg = |n: &Node| Node::Neg(Box::new(n.clone()));
            Some(Node::Union(vec![iv(&neg(c), &neg(a), closed(o2), closed(o1)), iv(a, c, closed(o1), closed(o2))]))
        }
        ([a, x, c], [o1, o2]) if is_name(x) || !no_symbols(x) => {
            if up(o1) && up(o2) {
                Some(iv(a, c, closed(o1), closed(o2)))
            } else if down(o1) && down(o2) {
                Some(iv(c, a, closed(o2), closed(o1)))
            } else {
                None
            }
        }
        ([x, a], [o]) if !no_symbols(x) && no_symbols(a) => {
            if up(o) {
                Some(iv(&neg_inf, a, false, closed(o)))
            } else if down(o) {
                Some(iv(a, &Node::Inf, closed(o), false))
            } else {
                None
            }
        }
        ([a, x], [o]) if !no_symbols(x) && no_symbols(a) => {
            if up(o) {
                Some(iv(a, &Node::Inf, closed(o), false))
            } else if down(o) {
                Some(iv(&neg_inf, a, false, closed(o)))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn rel_vs_value(r: &Node, v: &Node, b: &mut Budget) -> Tri {
    let Some((parts, ops)) = normalize_rel(r) else { return Tri::False };
    // `x = 5` against `5`: only a value (no free variables) assigned to a bare name; an
    // equation such as `y = 2x + 1` is never judged by its right-hand side alone.
    if ops.len() == 1 && ops[0] == RelOp::Eq {
        if is_name(&parts[0]) && no_symbols(&parts[1]) {
            return eq(&parts[1], v, b);
        }
        if is_name(&parts[1]) && no_symbols(&parts[0]) {
            return eq(&parts[0], v, b);
        }
        // A computation `3 + 3 = 6` (no variables anywhere) states its last value.
        if parts.iter().all(no_symbols) && (parts[1].is_scalar() || !parts[0].is_scalar()) {
            return eq(&parts[1], v, b);
        }
        return Tri::False;
    }
    if let Some(iv) = rel_to_interval(&parts, &ops) {
        let v2 = match v {
            Node::Tuple(t) if t.len() == 2 => open_interval(t),
            other => other.clone(),
        };
        if matches!(v2, Node::Interval { .. } | Node::Union(_)) {
            return eq(&iv, &v2, b);
        }
    }
    Tri::False
}

/// Deterministic evaluation points for the given variables (positive reals).
fn points(names: &[String]) -> Vec<Vec<Complex64>> {
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..POINTS).map(|_| names.iter().map(|_| Complex64::new(0.3 + 2.7 * next(), 0.0)).collect()).collect()
}

fn variables(a: &Node, c: &Node) -> Vec<String> {
    let mut s = BTreeSet::new();
    a.symbols(&mut s);
    c.symbols(&mut s);
    s.into_iter().filter(|n| !n.ends_with("()")).collect()
}

fn close(a: Complex64, c: Complex64, abs_tol: f64) -> bool {
    let d = (a - c).norm();
    d <= abs_tol || d <= REL_TOL * a.norm().max(c.norm())
}

/// Places written after the decimal point when a node is a bare decimal number.
fn decimal_places(n: &Node) -> Option<u32> {
    match n {
        Node::Dec(_, k) => Some(*k),
        Node::Neg(a) | Node::Percent(a) => decimal_places(a),
        _ => None,
    }
}

/// Half a unit of the last written place of a side written as a decimal with at least two
/// places and two significant digits (`0.33` for 1/3, `2.6667` for 8/3; not `0.8` for 3/4),
/// when the other side is exact.
fn rounding_tolerance(g: &Node, p: &Node) -> f64 {
    let sig = |n: &Node| -> usize {
        fn dec(n: &Node) -> Option<&super::expr::Rat> {
            match n {
                Node::Dec(r, _) => Some(r),
                Node::Neg(a) | Node::Percent(a) => dec(a),
                _ => None,
            }
        }
        dec(n).map_or(0, |r| r.numer().to_string().trim_start_matches('-').trim_start_matches('0').len())
    };
    match (decimal_places(g), decimal_places(p)) {
        (Some(k), None) if k >= 2 && sig(g) >= 2 => 0.5 * 10f64.powi(-(k.min(300) as i32)) * (1.0 + 1e-9),
        (None, Some(k)) if k >= 2 && sig(p) >= 2 => 0.5 * 10f64.powi(-(k.min(300) as i32)) * (1.0 + 1e-9),
        _ => 0.0,
    }
}

fn scalar_eq(g: &Node, p: &Node) -> Tri {
    let vars = variables(g, p);
    let tol = rounding_tolerance(g, p);
    if vars.is_empty() {
        let (eg, ep) = (exact(g), exact(p));
        match (&eg, &ep) {
            (Ok(a), Ok(c)) => {
                if a == c {
                    return Tri::True;
                }
                if tol == 0.0 {
                    return Tri::False;
                }
                let d = a.sub(c).abs().to_f64();
                return Tri::from_bool(d <= tol);
            }
            (Err(ExactError::TooBig(w)), _) | (_, Err(ExactError::TooBig(w))) => {
                return Tri::Unknown(format!("budget: {w} too large to compare exactly"));
            }
            _ => {}
        }
        let pt = Point { names: &[], values: &[] };
        let (Some(a), Some(c)) = (eval(g, &pt), eval(p, &pt)) else {
            return Tri::Unknown("undefined value".into());
        };
        // A written ±∞ against a finite number is decided; an overflow is not (compare_values).
        let finite = |z: Complex64| z.re.is_finite() && z.im.is_finite();
        if (written_infinity(g) && finite(c)) || (written_infinity(p) && finite(a)) {
            return Tri::False;
        }
        return compare_values(a, c, tol);
    }
    let pts = points(&vars);
    let mut valid = 0;
    for vals in &pts {
        let pt = Point { names: &vars, values: vals };
        let (Some(a), Some(c)) = (eval(g, &pt), eval(p, &pt)) else { continue };
        if !(a.re.is_finite() && a.im.is_finite() && c.re.is_finite() && c.im.is_finite()) {
            continue;
        }
        if !close(a, c, tol.max(1e-12 * (1.0 + a.norm()))) {
            return Tri::False;
        }
        valid += 1;
    }
    if valid >= 3 { Tri::True } else { Tri::Unknown("too few points where both sides are defined".into()) }
}

/// `∞`, `+∞` or `-∞` as written (not a value that overflowed).
fn written_infinity(n: &Node) -> bool {
    match n {
        Node::Inf => true,
        Node::Neg(x) => written_infinity(x),
        _ => false,
    }
}

fn compare_values(a: Complex64, c: Complex64, tol: f64) -> Tri {
    let finite = |z: Complex64| z.re.is_finite() && z.im.is_finite();
    if a.re.is_nan() || a.im.is_nan() || c.re.is_nan() || c.im.is_nan() {
        return Tri::Unknown("undefined value".into());
    }
    if !finite(a) || !finite(c) {
        if !finite(a) && !finite(c) {
            return Tri::from_bool(a.re.signum() == c.re.signum() && a.im == c.im);
        }
        // One infinite: fine only if the infinity is genuine (∞ written) — an overflow is not.
        return Tri::Unknown("budget: value outside floating-point range".into());
    }
    let m = a.norm().max(c.norm());
    if m != 0.0 && m < 1e-250 {
        return Tri::Unknown("budget: value outside floating-point range".into());
    }
    Tri::from_bool(close(a, c, tol))
}

/// `d1 = k * d2` for a constant `k` (positive when `positive`) at every sample point.
fn proportional(d1: &Node, d2: &Node, positive: bool) -> Tri {
    let vars = variables(d1, d2);
    let pts = if vars.is_empty() { vec![vec![]] } else { points(&vars) };
    let mut ratio: Option<Complex64> = None;
    let mut valid = 0;
    for vals in &pts {
        let pt = Point { names: &vars, values: vals };
        let (Some(a), Some(c)) = (eval(d1, &pt), eval(d2, &pt)) else { continue };
        if !(a.re.is_finite() && a.im.is_finite() && c.re.is_finite() && c.im.is_finite()) {
            continue;
        }
        valid += 1;
        let small = |z: Complex64| z.norm() < 1e-10;
        match (small(a), small(c)) {
            (true, true) => continue,
            (true, false) | (false, true) => return Tri::False,
            _ => {}
        }
        let r = a / c;
        match ratio {
            None => {
                if positive && (r.re <= 0.0 || r.im.abs() > 1e-9 * r.norm()) {
                    return Tri::False;
                }
                ratio = Some(r);
            }
            Some(k) => {
                if !close(r, k, 0.0) && (r - k).norm() > 1e-8 * k.norm() {
                    return Tri::False;
                }
            }
        }
    }
    let needed = if vars.is_empty() { 1 } else { 3 };
    if valid >= needed { Tri::True } else { Tri::Unknown("too few points where both sides are defined".into()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::math::latex::parse;

    fn judge(g: &str, p: &str) -> Tri {
        let g = parse(g).unwrap_or_else(|e| panic!("gold {g}: {e}"));
        let p = parse(p).unwrap_or_else(|e| panic!("pred {p}: {e}"));
        equivalent(&g, &p)
    }

    fn check(cases: &[(&str, &str, bool)]) {
        for (g, p, want) in cases {
            let got = judge(g, p);
            assert_eq!(got.is_true(), *want, "{g} vs {p}: {got:?}");
            // A "not equal" expectation is a decided one, not an undecided verdict.
            assert!(*want || matches!(got, Tri::False), "{g} vs {p}: expected not equal, got {got:?}");
        }
    }

    #[test]
    fn numbers_and_fractions() {
        check(&[
            ("3/4", "\\frac{3}{4}", true),
            ("3/4", "0.75", true),
            ("0.75", "\\dfrac{6}{8}", true),
            ("-5", "-5", true),
            ("7425000", "7,425,000", true),
            ("1000", "1000.0", true),
            ("2", "3", false),
            ("\\frac{1}{12}", "0.0833333333333333", true),
            ("\\frac{1}{3}", "0.33", true),
            ("\\frac{1}{3}", "0.3", false),
            ("\\frac{3}{4}", "0.8", false),
            ("\\frac{1}{16}", "0.06", false),
            ("0.52", "0.5", false),
            ("17", "17.04", false),
            ("\\text{13}", "13", true),
            ("\\frac{1}{2004!}", "\\frac{1}{2006!}", false),
            ("\\frac{1}{2006!}", "\\frac{1}{2006!}", true),
            ("\\frac{2005 \\cdot 2006}{2006!}", "\\frac{1}{2004!}", true),
            ("28\\%", "28", true),
            ("28\\%", "0.28", true),
            ("28\\%", "29", false),
        ]);
    }

    #[test]
    fn radicals_pi_and_constants() {
        check(&[
            ("\\sqrt{8}", "2\\sqrt{2}", true),
            ("\\sqrt{3}", "\\sqrt3", true),
            ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", true),
            ("\\frac{9}{4}\\pi", "\\frac94\\pi", true),
            ("2\\pi", "6.28", true),
            ("\\pi", "3", false),
            ("4", "4\\sqrt{2}", false),
            ("e^2", "\\exp(2)", true),
            ("i^2", "-1", true),
            ("\\sin^2(y) + \\cos^2(y)", "1", true),
            ("\\tan^2(y)+1", "\\sec^2(y)", true),
            ("\\sqrt{30} + \\sqrt{50}", "\\sqrt{30} + 5\\sqrt{2}", true),
            ("1 \\pm \\sqrt{19}", "\\{1+\\sqrt{19}, 1-\\sqrt{19}\\}", true),
            ("\\pm 2021", "2021", false),
        ]);
    }

    #[test]
    fn variables_sampled() {
        check(&[
            ("\\frac{x+2}{7}", "\\frac{x}{7}+\\frac{2}{7}", true),
            ("2x+1", "1+2x", true),
            ("x+1", "y+1", false),
            ("(a+5)(b+2)", "ab + 2a + 5b + 10", true),
            ("x+2n+1", "x+1", false),
            // Positive n (documented): equal on the domain where both are real.
            ("\\sqrt{1/n}", "1/\\sqrt{n}", true),
            ("2 \\sin b \\cos a", "\\sin(a+b) - \\sin(a-b)", true),
        ]);
    }

    #[test]
    fn equations_both_sides() {
        check(&[
            ("y=2x+1", "y=1+2x", true),
            ("y=2x+1", "y=2x+2", false),
            ("y=2x+1", "x=2y+1", false),
            ("y=2x+1", "2x+1", false),
            ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}", true),
            ("x^2/4 + y^2/3 = 1", "x^2/16 + y^2/12 = 1/4", true),
            ("x=5", "5", true),
            ("5", "x=5", true),
            ("k=1", "1", true),
            ("7 = 11a+c", "11a+c", false),
            ("a+3z=0", "0", false),
            ("x = 11", "x = 5+5+1 = 7 = 11", true),
            ("11", "x \\approx 11", true),
            ("x=1/3", "x = 5+5+1 = 1/3 \\approx 11", true),
            ("f(y) = y", "f(y) = y", true),
            ("x=5", "y=5", false),
        ]);
    }

    #[test]
    fn inequalities_and_intervals() {
        check(&[
            ("x \\geq 5", "x >= 5", true),
            ("x < 3", "x \\lt 3", true),
            ("x > 5", "x < 5", false),
            ("x \\leq 5", "5 \\geq x", true),
            ("x < 1", "-x > -1", true),
            ("x < 1", "x > -1", false),
            ("x \\neq 5", "x != 5", true),
            ("[0,1)", "[0,1)", true),
            ("[0,9)", "[0,1)", false),
            ("(0,9)", "[0,9)", false),
            ("-2 \\le x \\le 7", "x \\in [-2,7]", true),
            ("-793 < a < 10", "(-793, 10)", true),
            ("(1, +\\infty)", "(1, \\infty)", true),
            ("x > 1", "(1, \\infty)", true),
            ("(-8,\\infty)", "(-\\infty,-8)", false),
            ("(-\\infty, 3]", "(-\\infty, 3]", true),
            ("[2, \\infty)", "[2, 100)", false),
            ("\\infty", "5", false),
            ("-\\infty", "\\infty", false),
            ("(\\frac{3}{5},\\frac{8}{3}]", "(0.6,2.6667]", true),
            ("[-1, -\\frac{1}{2}) \\cup (0, 1)", "(0, 1) \\cup [-1, -\\tfrac12)", true),
            ("(0,1) \\cup (2,3)", "(0,1) \\cup (2,4)", false),
        ]);
    }

    #[test]
    fn sets_tuples_matrices() {
        check(&[
            ("\\{1,2,3\\}", "\\{3,2,1\\}", true),
            ("1,2,3", "3, 2, 1", true),
            ("(1,2)", "(2,1)", false),
            ("(1,\\frac{9}{2})", "(1,4.5)", true),
            ("\\{1,2\\}", "\\{1,2,3\\}", false),
            ("-2,1", "1, -2", true),
            ("\\{1\\pm\\sqrt{5},-2\\}", "\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}", true),
            ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\begin{bmatrix}1 & 2 \\\\ 3 & 4\\end{bmatrix}", true),
            ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\begin{pmatrix}1 & 2 \\\\ 3 & 5\\end{pmatrix}", false),
            ("(p,q)=(3,2)", "(3,2)", true),
            (
                "\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}",
                "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}",
                true,
            ),
            (
                "\\begin{pmatrix}2 & 1 \\\\ 4 & 3\\end{pmatrix}",
                "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} \\begin{pmatrix}0 & 1 \\\\ 1 & 0\\end{pmatrix}",
                true,
            ),
            ("\\begin{pmatrix}2 & 4\\end{pmatrix}", "2\\begin{pmatrix}1 & 2\\end{pmatrix}", true),
            ("a_3 = 2, a_{37} = 19", "a_{37} = 19, a_3 = 2", true),
        ]);
    }

    #[test]
    fn matrices_and_vectors() {
        let m = "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}";
        check(&[
            (m, m, true),
            (m, "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", true),
            (m, "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", true),
            (m, "\\left(\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right)", true),
            (m, "\\left[\\begin{matrix}1&2\\\\3&4\\end{matrix}\\right]", true),
            (m, "\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}", false),
            (m, "\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", false),
            (m, "\\begin{pmatrix}1&2&3\\\\3&4&5\\end{pmatrix}", false),
            (m, "\\begin{pmatrix}1\\\\2\\\\3\\\\4\\end{pmatrix}", false),
            // Entries that are fractions, radicals and expressions.
            (
                "\\begin{pmatrix}\\frac{1}{2} & -\\frac{\\sqrt{3}}{2} \\\\ \\frac{\\sqrt{3}}{2} & \\frac{1}{2}\\end{pmatrix}",
                "\\begin{bmatrix}0.5 & -\\frac{1}{2}\\sqrt3 \\\\ \\frac{3}{2\\sqrt{3}} & \\tfrac12\\end{bmatrix}",
                true,
            ),
            (
                "\\begin{pmatrix}\\frac{1}{2} & -\\frac{\\sqrt{3}}{2} \\\\ \\frac{\\sqrt{3}}{2} & \\frac{1}{2}\\end{pmatrix}",
                "\\begin{pmatrix}\\frac{1}{2} & \\frac{\\sqrt{3}}{2} \\\\ -\\frac{\\sqrt{3}}{2} & \\frac{1}{2}\\end{pmatrix}",
                false,
            ),
            (
                "\\begin{pmatrix}2x+1 & x^2-1 \\\\ 0 & \\sqrt{8}\\end{pmatrix}",
                "\\begin{pmatrix}1+2x & (x-1)(x+1) \\\\ 0 & 2\\sqrt{2}\\end{pmatrix}",
                true,
            ),
            ("\\begin{pmatrix}2x+1 & 0\\end{pmatrix}", "\\begin{pmatrix}2x-1 & 0\\end{pmatrix}", false),
            // Column and row vectors, against each other and against tuples.
            ("\\begin{pmatrix} 1 \\\\ -2 \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix}1\\\\-2\\\\3\\end{pmatrix}", true),
            ("\\begin{pmatrix} 1 \\\\ -2 \\\\ 3 \\end{pmatrix}", "(1, -2, 3)", true),
            ("(1, -2, 3)", "\\begin{bmatrix} 1 \\\\ -2 \\\\ 3 \\end{bmatrix}", true),
            ("\\begin{pmatrix} 1 \\\\ -2 \\\\ 3 \\end{pmatrix}", "(1, 3, -2)", false),
            ("\\begin{pmatrix} 1 \\\\ -2 \\\\ 3 \\end{pmatrix}", "(1, -2)", false),
            ("\\begin{pmatrix} 1 & -2 & 3 \\end{pmatrix}", "(1, -2, 3)", true),
            ("\\begin{pmatrix} 1 & -2 & 3 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ -2 \\\\ 3 \\end{pmatrix}", false),
            (
                "\\begin{pmatrix} \\frac{1}{3} \\\\ \\frac{\\sqrt{2}}{2} \\\\ a+b \\end{pmatrix}",
                "\\begin{pmatrix} 1/3 \\\\ \\frac{1}{\\sqrt{2}} \\\\ b+a \\end{pmatrix}",
                true,
            ),
            (
                "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
                "\\begin{pmatrix} -\\frac13 \\\\ \\frac{2}{3} \\end{pmatrix}",
                true,
            ),
            ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}", "\\begin{pmatrix} 1/3 \\\\ 2/3 \\end{pmatrix}", false),
        ]);
    }

    #[test]
    fn text_and_choices() {
        check(&[
            ("\\text{Evelyn}", "Evelyn", true),
            ("\\text{(C)}", "C", true),
            ("(B)", "B", true),
            ("\\text{E}", "E", true),
            ("d", "\\text{E}", false),
            ("\\text{odd}", "odd", true),
            ("\\text{Even}", "Odd", false),
            ("\\text{The midpoints form a regular hexagon}", "\\text{the midpoints form a Regular hexagon}", true),
        ]);
    }

    #[test]
    fn budget_is_undecided() {
        let t = judge("10^{10^{10}}", "5");
        assert!(matches!(t, Tri::Unknown(_)), "{t:?}");
        let t = judge("2^{100000000}", "2^{100000001}");
        assert!(matches!(t, Tri::Unknown(_)), "{t:?}");
        let t = judge("99999!", "5");
        assert!(!t.is_true(), "{t:?}");
    }
}
