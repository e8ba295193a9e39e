//! LaTeX and plain-text math to an expression tree ([`Node`]).
//!
//! A tokenizer turns the answer into tokens (numbers with thousands separators, letters,
//! commands, words, `\text{}` contents), then a recursive-descent parser with a depth limit
//! builds the tree: lists, relations, unions, sums, products (explicit and implicit), unary
//! signs, powers, postfix `!` and `%`, and primaries (fractions, roots, functions, groups,
//! tuples, intervals, sets, matrices, absolute values).

use num_bigint::BigInt;

use super::expr::{Fun, Node, Rat, RelOp, limits};

/// Why an answer could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("unexpected {0} at token {1}")]
    Unexpected(String, usize),
    #[error("unexpected end of input")]
    End,
    #[error("nesting deeper than {} levels", limits::MAX_DEPTH)]
    TooDeep,
    #[error("answer longer than {} bytes", limits::MAX_ANSWER_BYTES)]
    TooLong,
    #[error("empty answer")]
    Empty,
}

impl ParseError {
    /// Whether the error is a work-budget limit (the verdict is `undecided`).
    pub fn is_budget(&self) -> bool {
        matches!(self, ParseError::TooDeep | ParseError::TooLong)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(String),
    Letter(char),
    /// A multi-letter word (plain text, units).
    Word(String),
    /// A named command or function (`frac`, `sin`, `alpha`, …).
    Cmd(String),
    /// Contents of `\text{…}` and friends.
    Text(String),
    Op(char),
    Rel(RelOp),
    In,
    Cup,
    Pm,
    Mp,
    SetOpen,
    SetClose,
    Percent,
    /// `,` `and` `or`: separators of a list.
    Sep,
    /// `;`: separates groups of a list (`p=5,q=2; p=7,q=2`).
    Semi,
    Comma,
    Amp,
    RowSep,
    BeginMat,
    EndMat,
    Inf,
    Pi,
    Empty,
}

const FUNCS: &[&str] = &[
    "sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "asin", "acos", "atan", "sinh", "cosh",
    "tanh", "ln", "log", "exp", "sqrt", "max", "min", "gcd", "lcm", "abs",
];
const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];
const TEXT_CMDS: &[&str] =
    &["text", "textbf", "textit", "textrm", "textnormal", "textup", "textsf", "texttt", "mbox", "hbox", "emph"];
const STYLE_CMDS: &[&str] = &["mathrm", "mathbf", "mathit", "mathsf", "mathtt", "operatorname", "boldsymbol", "bm"];
const SKIP_CMDS: &[&str] = &[
    "left",
    "right",
    "big",
    "Big",
    "bigg",
    "Bigg",
    "bigl",
    "bigr",
    "Bigl",
    "Bigr",
    "biggl",
    "biggr",
    "middle",
    "displaystyle",
    "textstyle",
    "limits",
    "nolimits",
    "quad",
    "qquad",
    "boxed",
    "fbox",
    "mathstrut",
    "cr",
    "overline",
    "underline",
    "vec",
    "hat",
    "bar",
    "widehat",
    "overrightarrow",
    "tilde",
    "dot",
    "ddot",
    "nonumber",
    "notag",
    "mathbb",
    "mathcal",
    "dots",
    "ldots",
    "cdots",
    "therefore",
    "implies",
    "Rightarrow",
    "rightarrow",
    "to",
    "iff",
    "qed",
    "hline",
    "cline",
    "color",
    "mathop",
];
const MATRIX_ENVS: &[&str] = &["pmatrix", "bmatrix", "Bmatrix", "matrix", "smallmatrix", "array", "vmatrix", "Vmatrix"];
const UNIT_WORDS: &[&str] = &["cm", "mm", "km", "kg", "mg", "ml", "ft", "m", "g", "s"];

fn is_word_char(c: char) -> bool {
    c.is_alphabetic() && !matches!(c, 'π' | '∞')
}

/// Normalises an answer string before tokenizing: degree signs, `\!` spacing in numbers,
/// decimal commas of plain numbers, thousands separated by spaces.
fn preprocess(s: &str) -> String {
    let mut t = s.trim().to_string();
    // Doubly escaped LaTeX (`\\frac`) from JSON written twice.
    if t.contains("\\\\") && !t.contains("\\begin") {
        let mut out = String::with_capacity(t.len());
        let mut it = t.chars().peekable();
        while let Some(c) = it.next() {
            if c == '\\' && it.peek() == Some(&'\\') {
                let mut la = it.clone();
                la.next();
                if la.peek().is_some_and(|n| n.is_ascii_alphabetic()) {
                    continue;
                }
            }
            out.push(c);
        }
        t = out;
    }
    for pat in ["^{\\circ}", "^\\circ", "^ \\circ", "^{\\degree}", "\\degree", "\\circ", "°"] {
        if t.contains(pat) {
            t = t.replace(pat, " ");
        }
    }
    for (pat, rep) in [(",\\! ", ","), (",\\!", ","), ("{,}", ","), ("\\!", ""), ("{ , }", ","), ("{, }", ",")] {
        if t.contains(pat) {
            t = t.replace(pat, rep);
        }
    }
    let core = t.trim_matches(|c: char| c == '$' || c.is_whitespace());
    // Plain numbers only: "1,5" / "0,111" are decimal commas; "1 000" is a thousand.
    let bytes = core.as_bytes();
    if !s.contains('$') && !core.is_empty() && bytes.iter().all(|b| b.is_ascii_digit() || *b == b',') {
        let parts: Vec<&str> = core.split(',').collect();
        if parts.len() == 2 && !parts[0].is_empty() && !parts[1].is_empty() {
            // "1,22", "1000,99", "0,5" are decimal commas; "1,234" is a thousand separator
            // and "6,8" a list of two numbers.
            let thousands = parts[1].len() == 3 && parts[0].len() <= 3 && !parts[0].starts_with('0');
            let decimal = parts[0] == "0" || (parts[1].len() >= 2 && !thousands);
            if decimal {
                return format!("{}.{}", parts[0], parts[1]);
            }
        }
    }
    if !core.is_empty() && bytes.iter().all(|b| b.is_ascii_digit() || *b == b' ') && core.contains(' ') {
        let groups: Vec<&str> = core.split(' ').collect();
        if groups[0].len() <= 3 && groups[1..].iter().all(|g| g.len() == 3) {
            return groups.concat();
        }
    }
    t
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    out: Vec<Tok>,
    envs: Vec<bool>,
    paren: i32,
    _src: &'a str,
}

/// Reads a balanced `{…}` group starting at `pos` (which must be `{`); returns its contents.
fn read_group(chars: &[char], pos: &mut usize) -> Option<String> {
    if chars.get(*pos) != Some(&'{') {
        return None;
    }
    let mut depth = 0usize;
    let start = *pos + 1;
    while *pos < chars.len() {
        match chars[*pos] {
            '\\' => *pos += 1,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let s: String = chars[start..*pos].iter().collect();
                    *pos += 1;
                    return Some(s);
                }
            }
            _ => {}
        }
        *pos += 1;
    }
    let s: String = chars[start.min(chars.len())..].iter().collect();
    Some(s)
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn number(&mut self) {
        let c = &self.chars;
        let mut s = String::new();
        let start = self.pos;
        while self.pos < c.len() && c[self.pos].is_ascii_digit() {
            s.push(c[self.pos]);
            self.pos += 1;
        }
        // Thousands separators: 1,234,567 (groups of exactly three digits), not inside a tuple.
        let first_group = self.pos - start;
        if first_group > 0 && first_group <= 3 && self.paren == 0 {
            loop {
                let p = self.pos;
                if p + 3 < c.len() + 1
                    && c.get(p) == Some(&',')
                    && c.get(p + 1).is_some_and(|d| d.is_ascii_digit())
                    && c.get(p + 2).is_some_and(|d| d.is_ascii_digit())
                    && c.get(p + 3).is_some_and(|d| d.is_ascii_digit())
                    && !c.get(p + 4).is_some_and(|d| d.is_ascii_digit())
                {
                    s.extend(&c[p + 1..p + 4]);
                    self.pos = p + 4;
                } else {
                    break;
                }
            }
        }
        if self.pos + 1 < c.len() && c[self.pos] == '.' && c[self.pos + 1].is_ascii_digit() {
            s.push('.');
            self.pos += 1;
            while self.pos < c.len() && c[self.pos].is_ascii_digit() {
                s.push(c[self.pos]);
                self.pos += 1;
            }
        }
        // Scientific notation written as 1.5e-3 / 2E5.
        if self.pos < c.len() && (c[self.pos] == 'e' || c[self.pos] == 'E') {
            let mut q = self.pos + 1;
            if q < c.len() && (c[q] == '-' || c[q] == '+') {
                q += 1;
            }
            let ds = q;
            while q < c.len() && c[q].is_ascii_digit() {
                q += 1;
            }
            if q > ds && !c.get(q).is_some_and(|x| x.is_alphabetic()) {
                let exp: String = c[self.pos + 1..q].iter().collect();
                self.out.push(Tok::Num(s));
                self.out.push(Tok::Op('*'));
                self.out.push(Tok::Num("10".into()));
                self.out.push(Tok::Op('^'));
                self.out.push(Tok::Op('{'));
                if let Some(rest) = exp.strip_prefix('-') {
                    self.out.push(Tok::Op('-'));
                    self.out.push(Tok::Num(rest.into()));
                } else {
                    self.out.push(Tok::Num(exp.trim_start_matches('+').into()));
                }
                self.out.push(Tok::Op('}'));
                self.pos = q;
                return;
            }
        }
        self.out.push(Tok::Num(s));
    }

    fn word(&mut self) {
        let start = self.pos;
        while self.pos < self.chars.len() && is_word_char(self.chars[self.pos]) {
            self.pos += 1;
        }
        let w: String = self.chars[start..self.pos].iter().collect();
        self.push_word(&w);
    }

    fn push_word(&mut self, w: &str) {
        let lower = w.to_lowercase();
        match lower.as_str() {
            "and" | "or" => return self.out.push(Tok::Sep),
            "percent" | "pct" | "percentage" => return self.out.push(Tok::Percent),
            "pi" => return self.out.push(Tok::Pi),
            "infty" | "inf" | "infinity" => return self.out.push(Tok::Inf),
            _ => {}
        }
        if FUNCS.contains(&lower.as_str()) && w.chars().all(|c| c.is_ascii_lowercase()) {
            return self.out.push(Tok::Cmd(lower));
        }
        let n = w.chars().count();
        if n >= 3 || (n == 2 && UNIT_WORDS.contains(&w)) || !w.is_ascii() {
            self.out.push(Tok::Word(w.to_string()));
        } else {
            w.chars().for_each(|c| self.out.push(Tok::Letter(c)));
        }
    }

    fn command(&mut self) -> Result<(), ParseError> {
        let c = &self.chars;
        self.pos += 1; // backslash
        let Some(&first) = c.get(self.pos) else { return Ok(()) };
        if !first.is_ascii_alphabetic() {
            self.pos += 1;
            match first {
                '\\' if self.envs.last() == Some(&true) => self.out.push(Tok::RowSep),
                '{' => self.out.push(Tok::SetOpen),
                '}' => self.out.push(Tok::SetClose),
                '%' => self.out.push(Tok::Percent),
                '|' => self.out.push(Tok::Op('|')),
                '#' | '&' | '_' => {}
                _ => {} // \, \; \: \! \  \$ \[ \] \( \)
            }
            return Ok(());
        }
        let start = self.pos;
        while self.pos < c.len() && c[self.pos].is_ascii_alphabetic() {
            self.pos += 1;
        }
        let name: String = c[start..self.pos].iter().collect();
        let n = name.as_str();
        match n {
            "frac" | "dfrac" | "tfrac" | "cfrac" => self.out.push(Tok::Cmd("frac".into())),
            "binom" | "dbinom" | "tbinom" => self.out.push(Tok::Cmd("binom".into())),
            "cdot" | "times" | "ast" => self.out.push(Tok::Op('*')),
            "div" => self.out.push(Tok::Op('/')),
            "pm" => self.out.push(Tok::Pm),
            "mp" => self.out.push(Tok::Mp),
            "le" | "leq" | "leqslant" | "leqq" => self.out.push(Tok::Rel(RelOp::Le)),
            "ge" | "geq" | "geqslant" | "geqq" => self.out.push(Tok::Rel(RelOp::Ge)),
            "lt" => self.out.push(Tok::Rel(RelOp::Lt)),
            "gt" => self.out.push(Tok::Rel(RelOp::Gt)),
            "ne" | "neq" => self.out.push(Tok::Rel(RelOp::Ne)),
            "approx" | "simeq" | "thickapprox" | "sim" => self.out.push(Tok::Rel(RelOp::Approx)),
            "equiv" => self.out.push(Tok::Rel(RelOp::Eq)),
            "in" => self.out.push(Tok::In),
            "cup" => self.out.push(Tok::Cup),
            "infty" | "infin" => self.out.push(Tok::Inf),
            "pi" => self.out.push(Tok::Pi),
            "emptyset" | "varnothing" => self.out.push(Tok::Empty),
            "lbrace" => self.out.push(Tok::SetOpen),
            "rbrace" => self.out.push(Tok::SetClose),
            "langle" => self.out.push(Tok::Op('(')),
            "rangle" => self.out.push(Tok::Op(')')),
            "vert" | "lvert" | "rvert" | "mid" => self.out.push(Tok::Op('|')),
            "lfloor" | "rfloor" | "lceil" | "rceil" => self.out.push(Tok::Cmd(name)),
            "colon" => self.out.push(Tok::Op(':')),
            "percent" => self.out.push(Tok::Percent),
            "hspace" | "vspace" | "label" | "tag" => {
                self.skip_ws();
                let _ = read_group(&self.chars, &mut self.pos);
            }
            "begin" | "end" => {
                self.skip_ws();
                let env = read_group(&self.chars, &mut self.pos).unwrap_or_default();
                let env = env.trim().trim_end_matches('*');
                let is_mat = MATRIX_ENVS.contains(&env);
                if n == "begin" {
                    self.envs.push(is_mat);
                    if is_mat {
                        self.out.push(Tok::BeginMat);
                        if env == "array" {
                            self.skip_ws();
                            let _ = read_group(&self.chars, &mut self.pos);
                        }
                    }
                } else {
                    self.envs.pop();
                    if is_mat {
                        self.out.push(Tok::EndMat);
                    }
                }
            }
            _ if TEXT_CMDS.contains(&n) => {
                self.skip_ws();
                if let Some(g) = read_group(&self.chars, &mut self.pos) {
                    self.text(&g)?;
                }
            }
            _ if STYLE_CMDS.contains(&n) => {
                self.skip_ws();
                if let Some(g) = read_group(&self.chars, &mut self.pos) {
                    let g = g.trim();
                    if g.chars().all(|ch| ch.is_ascii_alphabetic()) && !g.is_empty() {
                        if g.len() == 1 {
                            self.out.push(Tok::Letter(g.chars().next().unwrap_or('x')));
                        } else {
                            self.push_word(g);
                        }
                    } else {
                        self.sub(g)?;
                    }
                }
            }
            _ if SKIP_CMDS.contains(&n) => {
                if matches!(n, "left" | "right" | "bigl" | "bigr" | "Bigl" | "Bigr" | "big" | "Big" | "middle")
                    && self.chars.get(self.pos) == Some(&'.')
                {
                    self.pos += 1;
                }
                if matches!(n, "color" | "mathbb" | "mathcal") {
                    self.skip_ws();
                    let g = read_group(&self.chars, &mut self.pos);
                    if n != "color"
                        && let Some(g) = g
                    {
                        self.out.push(Tok::Word(format!("{n}{g}")));
                    }
                }
            }
            _ if FUNCS.contains(&n) => self.out.push(Tok::Cmd(name)),
            _ => self.out.push(Tok::Cmd(name)),
        }
        Ok(())
    }

    fn sub(&mut self, s: &str) -> Result<(), ParseError> {
        let mut inner =
            Lexer { chars: s.chars().collect(), pos: 0, out: Vec::new(), envs: Vec::new(), paren: self.paren, _src: s };
        inner.run()?;
        self.out.append(&mut inner.out);
        Ok(())
    }

    fn text(&mut self, g: &str) -> Result<(), ParseError> {
        let t = g.trim();
        if t.is_empty() {
            return Ok(());
        }
        let lower = t.to_lowercase();
        if matches!(lower.as_str(), "and" | "or" | "," | ";" | "or," | "and,") {
            self.out.push(Tok::Sep);
            return Ok(());
        }
        if t.chars().any(|c| c.is_ascii_digit()) || t.chars().all(|c| !c.is_alphanumeric()) {
            return self.sub(t);
        }
        self.out.push(Tok::Text(t.to_string()));
        Ok(())
    }

    fn run(&mut self) -> Result<(), ParseError> {
        while self.pos < self.chars.len() {
            let ch = self.chars[self.pos];
            match ch {
                c if c.is_whitespace() => self.pos += 1,
                c if c.is_ascii_digit() => self.number(),
                '.' if self.chars.get(self.pos + 1).is_some_and(|d| d.is_ascii_digit()) => {
                    // ".5"
                    self.chars.insert(self.pos, '0');
                    self.number();
                }
                '\\' => self.command()?,
                c if is_word_char(c) => self.word(),
                '$' | '\'' | '"' | '`' | '?' | '€' | '£' | '¥' | '#' | '@' | '.' => self.pos += 1,
                '~' => self.pos += 1,
                '%' => {
                    self.out.push(Tok::Percent);
                    self.pos += 1
                }
                '&' => {
                    if self.envs.last() == Some(&true) {
                        self.out.push(Tok::Amp);
                    }
                    self.pos += 1
                }
                ',' => {
                    self.out.push(Tok::Comma);
                    self.pos += 1
                }
                ';' => {
                    self.out.push(Tok::Semi);
                    self.pos += 1
                }
                '<' | '>' | '=' | '!' | '≤' | '≥' | '≠' => {
                    let next = self.chars.get(self.pos + 1).copied();
                    self.pos += 1;
                    let tok = match (ch, next) {
                        ('<', Some('=')) => {
                            self.pos += 1;
                            Tok::Rel(RelOp::Le)
                        }
                        ('>', Some('=')) => {
                            self.pos += 1;
                            Tok::Rel(RelOp::Ge)
                        }
                        ('!', Some('=')) => {
                            self.pos += 1;
                            Tok::Rel(RelOp::Ne)
                        }
                        ('=', Some('=')) => {
                            self.pos += 1;
                            Tok::Rel(RelOp::Eq)
                        }
                        ('<', _) => Tok::Rel(RelOp::Lt),
                        ('>', _) => Tok::Rel(RelOp::Gt),
                        ('=', _) => Tok::Rel(RelOp::Eq),
                        ('≤', _) => Tok::Rel(RelOp::Le),
                        ('≥', _) => Tok::Rel(RelOp::Ge),
                        ('≠', _) => Tok::Rel(RelOp::Ne),
                        _ => Tok::Op('!'),
                    };
                    self.out.push(tok);
                }
                '(' | '[' => {
                    self.paren += 1;
                    self.out.push(Tok::Op(ch));
                    self.pos += 1
                }
                ')' | ']' => {
                    self.paren -= 1;
                    self.out.push(Tok::Op(ch));
                    self.pos += 1
                }
                '+' | '-' | '*' | '/' | '^' | '_' | '{' | '}' | '|' | ':' => {
                    self.out.push(Tok::Op(ch));
                    self.pos += 1
                }
                '−' | '–' => {
                    self.out.push(Tok::Op('-'));
                    self.pos += 1
                }
                '×' | '·' | '⋅' => {
                    self.out.push(Tok::Op('*'));
                    self.pos += 1
                }
                '÷' => {
                    self.out.push(Tok::Op('/'));
                    self.pos += 1
                }
                '±' => {
                    self.out.push(Tok::Pm);
                    self.pos += 1
                }
                'π' => {
                    self.out.push(Tok::Pi);
                    self.pos += 1
                }
                '∞' => {
                    self.out.push(Tok::Inf);
                    self.pos += 1
                }
                '√' => {
                    self.out.push(Tok::Cmd("sqrt".into()));
                    self.pos += 1
                }
                '²' | '³' => {
                    self.out.push(Tok::Op('^'));
                    self.out.push(Tok::Num(if ch == '²' { "2" } else { "3" }.into()));
                    self.pos += 1
                }
                _ => self.pos += 1,
            }
        }
        Ok(())
    }
}

fn tokenize(s: &str) -> Result<Vec<Tok>, ParseError> {
    let pre = preprocess(s);
    let mut lx = Lexer { chars: pre.chars().collect(), pos: 0, out: Vec::new(), envs: Vec::new(), paren: 0, _src: s };
    lx.run()?;
    Ok(lx.out)
}

/// Normalises a plain-text answer: lower case, words separated by single spaces, without
/// surrounding punctuation or parentheses.
pub fn normalize_text(s: &str) -> String {
    let mut out = String::new();
    for w in s.split(|c: char| !c.is_alphanumeric() && c != '.' && c != '-').filter(|w| !w.is_empty()) {
        let w = w.trim_matches(|c| c == '.' || c == '-');
        if w.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&w.to_lowercase());
    }
    out
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
    abs_depth: usize,
    nodes: usize,
}

fn parse_decimal(s: &str) -> Node {
    match s.split_once('.') {
        Some((int, frac)) => {
            let digits = format!("{int}{frac}");
            let num: BigInt = digits.parse().unwrap_or_default();
            let den = BigInt::from(10u32).pow(frac.len() as u32);
            Node::Dec(Rat::new(num, den).unwrap_or_else(Rat::zero), frac.len() as u32)
        }
        None => Node::Num(Rat::int(s.parse::<BigInt>().unwrap_or_default())),
    }
}

fn mul(a: Node, b: Node) -> Node {
    match a {
        Node::Mul(mut v) => {
            v.push(b);
            Node::Mul(v)
        }
        a => Node::Mul(vec![a, b]),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn err(&self) -> ParseError {
        match self.peek() {
            Some(t) => ParseError::Unexpected(format!("{t:?}"), self.pos),
            None => ParseError::End,
        }
    }
    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        self.nodes += 1;
        if self.depth > limits::MAX_DEPTH || self.nodes > limits::MAX_NODES * 4 {
            return Err(ParseError::TooDeep);
        }
        Ok(())
    }

    fn is_sep(t: Option<&Tok>) -> bool {
        matches!(t, Some(Tok::Sep | Tok::Comma | Tok::Semi))
    }

    /// Top level: a list of relations separated by commas, "and", "or"; with semicolons, a
    /// list of groups (each group of several items a tuple).
    fn list(&mut self) -> Result<Node, ParseError> {
        let mut depth = 0i32;
        let mut has_semi = false;
        for t in &self.toks[self.pos..] {
            match t {
                Tok::Op('(' | '[' | '{') | Tok::SetOpen | Tok::BeginMat => depth += 1,
                Tok::Op(')' | ']' | '}') | Tok::SetClose | Tok::EndMat => {
                    depth -= 1;
                    if depth < 0 {
                        break;
                    }
                }
                Tok::Semi if depth == 0 => {
                    has_semi = true;
                    break;
                }
                _ => {}
            }
        }
        if !has_semi {
            let items = self.seq()?;
            return Ok(if items.len() == 1 {
                items.into_iter().next().unwrap_or(Node::Set(vec![]))
            } else {
                Node::Set(items)
            });
        }
        let mut groups = Vec::new();
        loop {
            let mut items = Vec::new();
            while matches!(self.peek(), Some(Tok::Sep | Tok::Comma)) {
                self.pos += 1;
            }
            while !self.at_close() && self.peek() != Some(&Tok::Semi) {
                items.push(self.rel()?);
                while matches!(self.peek(), Some(Tok::Sep | Tok::Comma)) {
                    self.pos += 1;
                }
            }
            match items.len() {
                0 => {}
                1 => groups.extend(items),
                _ => groups.push(Node::Tuple(items)),
            }
            if !self.eat(&Tok::Semi) {
                break;
            }
        }
        Ok(if groups.len() == 1 { groups.into_iter().next().unwrap_or(Node::Set(vec![])) } else { Node::Set(groups) })
    }

    fn seq(&mut self) -> Result<Vec<Node>, ParseError> {
        let mut items = Vec::new();
        while Self::is_sep(self.peek()) {
            self.pos += 1;
        }
        if self.at_close() {
            return Ok(items);
        }
        items.push(self.rel()?);
        while Self::is_sep(self.peek()) {
            while Self::is_sep(self.peek()) {
                self.pos += 1;
            }
            if self.at_close() {
                break;
            }
            items.push(self.rel()?);
        }
        Ok(items)
    }

    fn at_close(&self) -> bool {
        matches!(
            self.peek(),
            None | Some(Tok::Op(')' | ']' | '}') | Tok::SetClose | Tok::EndMat | Tok::Amp | Tok::RowSep)
        )
    }

    fn rel(&mut self) -> Result<Node, ParseError> {
        self.enter()?;
        let mut parts = vec![self.union()?];
        let mut ops = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::Rel(op)) => {
                    let op = *op;
                    self.pos += 1;
                    if self.at_close() || Self::is_sep(self.peek()) {
                        break;
                    }
                    ops.push(op);
                    parts.push(self.union()?);
                }
                Some(Tok::In) => {
                    // "x \in S" is the set S.
                    self.pos += 1;
                    let s = self.union()?;
                    parts.pop();
                    parts.push(s);
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Ok(if ops.is_empty() { parts.pop().unwrap_or(Node::Set(vec![])) } else { Node::Rel(parts, ops) })
    }

    fn union(&mut self) -> Result<Node, ParseError> {
        let mut items = vec![self.additive()?];
        while self.eat(&Tok::Cup) {
            items.push(self.additive()?);
        }
        Ok(if items.len() == 1 { items.pop().unwrap_or(Node::Set(vec![])) } else { Node::Union(items) })
    }

    fn additive(&mut self) -> Result<Node, ParseError> {
        self.enter()?;
        let mut terms = vec![self.term()?];
        loop {
            match self.peek() {
                Some(Tok::Op('+')) => {
                    self.pos += 1;
                    terms.push(self.term()?);
                }
                Some(Tok::Op('-')) => {
                    self.pos += 1;
                    terms.push(Node::Neg(Box::new(self.term()?)));
                }
                Some(Tok::Pm | Tok::Mp) => {
                    self.pos += 1;
                    let left = if terms.len() == 1 {
                        terms.pop().unwrap_or(Node::num(0))
                    } else {
                        Node::Add(std::mem::take(&mut terms))
                    };
                    terms = vec![Node::PlusMinus(Box::new(left), Box::new(self.term()?))];
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Ok(if terms.len() == 1 { terms.pop().unwrap_or(Node::num(0)) } else { Node::Add(terms) })
    }

    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(
                Tok::Num(_)
                | Tok::Letter(_)
                | Tok::Word(_)
                | Tok::Text(_)
                | Tok::SetOpen
                | Tok::BeginMat
                | Tok::Inf
                | Tok::Pi
                | Tok::Empty,
            ) => true,
            Some(Tok::Op('(' | '{')) => true,
            Some(Tok::Op('|')) => self.abs_depth == 0,
            Some(Tok::Cmd(c)) => !matches!(c.as_str(), "rfloor" | "rceil"),
            _ => false,
        }
    }

    fn term(&mut self) -> Result<Node, ParseError> {
        self.enter()?;
        let mut acc = self.unary()?;
        loop {
            match self.peek() {
                Some(Tok::Op('*')) => {
                    self.pos += 1;
                    acc = mul(acc, self.unary()?);
                }
                Some(Tok::Op('/' | ':')) => {
                    self.pos += 1;
                    acc = Node::Div(Box::new(acc), Box::new(self.unary()?));
                }
                Some(Tok::Percent) => {
                    self.pos += 1;
                    acc = Node::Percent(Box::new(acc));
                }
                _ if self.starts_primary() => {
                    let f = self.power()?;
                    acc = mul(acc, f);
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Ok(clean_text_factors(acc))
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        self.enter()?;
        let r = match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                Node::Neg(Box::new(self.unary()?))
            }
            Some(Tok::Op('+')) => {
                self.pos += 1;
                self.unary()?
            }
            Some(Tok::Pm | Tok::Mp) => {
                self.pos += 1;
                Node::PlusMinus(Box::new(Node::num(0)), Box::new(self.unary()?))
            }
            _ => self.power()?,
        };
        self.depth -= 1;
        Ok(r)
    }

    fn power(&mut self) -> Result<Node, ParseError> {
        self.enter()?;
        let mut base = self.postfix()?;
        while self.eat(&Tok::Op('^')) {
            let e = self.exponent()?;
            base = Node::Pow(Box::new(base), Box::new(e));
            base = self.postfix_ops(base);
        }
        self.depth -= 1;
        Ok(base)
    }

    fn exponent(&mut self) -> Result<Node, ParseError> {
        match self.peek() {
            Some(Tok::Op('{')) => self.primary(),
            Some(Tok::Op('-')) => {
                self.pos += 1;
                Ok(Node::Neg(Box::new(self.exponent()?)))
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Node, ParseError> {
        let p = self.primary()?;
        Ok(self.postfix_ops(p))
    }

    fn postfix_ops(&mut self, mut p: Node) -> Node {
        loop {
            match self.peek() {
                Some(Tok::Op('!')) => {
                    self.pos += 1;
                    p = Node::Func(Fun::Factorial, vec![p]);
                }
                Some(Tok::Percent) => {
                    self.pos += 1;
                    p = Node::Percent(Box::new(p));
                }
                _ => return p,
            }
        }
    }

    /// A braced argument or a single token (`\frac12`, `\sqrt3`, `\frac{1}{x}`).
    fn arg(&mut self) -> Result<Node, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Op('{')) => self.primary(),
            Some(Tok::Num(s)) if s.len() > 1 && !s.contains('.') => {
                let (a, b) = s.split_at(1);
                self.toks[self.pos] = Tok::Num(b.to_string());
                Ok(parse_decimal(a))
            }
            Some(_) => self.primary(),
            None => Err(ParseError::End),
        }
    }

    fn subscript(&mut self) -> Result<Option<String>, ParseError> {
        if !self.eat(&Tok::Op('_')) {
            return Ok(None);
        }
        let mut s = String::new();
        let single = |t: &Tok| match t {
            Tok::Num(n) => n.clone(),
            Tok::Letter(c) => c.to_string(),
            Tok::Word(w) | Tok::Cmd(w) | Tok::Text(w) => w.clone(),
            other => format!("{other:?}"),
        };
        if self.eat(&Tok::Op('{')) {
            let mut depth = 1;
            while let Some(t) = self.next() {
                match t {
                    Tok::Op('{') => depth += 1,
                    Tok::Op('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                s.push_str(&single(&t));
            }
        } else if let Some(t) = self.next() {
            s = single(&t);
        }
        Ok(Some(s))
    }

    fn func_arg(&mut self) -> Result<Node, ParseError> {
        if self.peek() == Some(&Tok::Op('(')) {
            return self.primary();
        }
        // \sin 2x: the implicit product that follows.
        let mut acc = self.unary()?;
        while matches!(self.peek(), Some(Tok::Num(_) | Tok::Letter(_) | Tok::Pi)) {
            acc = mul(acc, self.power()?);
        }
        Ok(acc)
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        self.enter()?;
        let tok = self.next().ok_or(ParseError::End)?;
        let r = match tok {
            Tok::Num(s) => parse_decimal(&s),
            Tok::Pi => Node::Pi,
            Tok::Inf => Node::Inf,
            Tok::Empty => Node::Set(vec![]),
            Tok::Text(t) | Tok::Word(t) => Node::Text(normalize_text(&t)),
            Tok::Letter(c) => {
                let sub = self.subscript()?;
                match (c, sub) {
                    ('e', None) => Node::E,
                    ('i', None) => Node::I,
                    (c, None) if "fghFGHPQWp".contains(c) && self.peek() == Some(&Tok::Op('(')) => {
                        self.pos += 1;
                        let args = self.seq()?;
                        if !self.eat(&Tok::Op(')')) {
                            return Err(self.err());
                        }
                        Node::Func(Fun::Named(c.to_string()), args)
                    }
                    (c, None) => Node::Sym(c.to_string()),
                    (c, Some(s)) => Node::Sym(format!("{c}_{s}")),
                }
            }
            Tok::Op('(') => {
                let items = self.seq()?;
                match self.next() {
                    Some(Tok::Op(')')) => {
                        if items.len() == 1 {
                            items.into_iter().next().unwrap_or(Node::Set(vec![]))
                        } else {
                            Node::Tuple(items)
                        }
                    }
                    Some(Tok::Op(']')) if items.len() == 2 => {
                        let mut it = items.into_iter();
                        let lo = it.next().unwrap_or(Node::num(0));
                        let hi = it.next().unwrap_or(Node::num(0));
                        Node::Interval { lo: Box::new(lo), hi: Box::new(hi), lo_closed: false, hi_closed: true }
                    }
                    _ => return Err(self.err()),
                }
            }
            Tok::Op('[') => {
                let items = self.seq()?;
                match self.next() {
                    Some(Tok::Op(c @ (')' | ']'))) if items.len() == 2 => {
                        let mut it = items.into_iter();
                        let lo = it.next().unwrap_or(Node::num(0));
                        let hi = it.next().unwrap_or(Node::num(0));
                        Node::Interval { lo: Box::new(lo), hi: Box::new(hi), lo_closed: true, hi_closed: c == ']' }
                    }
                    Some(Tok::Op(']')) if items.len() == 1 => items.into_iter().next().unwrap_or(Node::num(0)),
                    Some(Tok::Op(']')) => Node::Tuple(items),
                    _ => return Err(self.err()),
                }
            }
            Tok::Op('{') => {
                let inner = if self.peek() == Some(&Tok::Op('}')) { Node::Text(String::new()) } else { self.list()? };
                if !self.eat(&Tok::Op('}')) {
                    return Err(self.err());
                }
                inner
            }
            Tok::SetOpen => {
                let items = self.seq()?;
                if !self.eat(&Tok::SetClose) {
                    return Err(self.err());
                }
                Node::Set(items)
            }
            Tok::Op('|') => {
                self.abs_depth += 1;
                let inner = self.additive()?;
                self.abs_depth -= 1;
                if !self.eat(&Tok::Op('|')) {
                    return Err(self.err());
                }
                Node::Func(Fun::Abs, vec![inner])
            }
            Tok::BeginMat => {
                let mut rows = vec![];
                let mut row = vec![];
                loop {
                    match self.peek() {
                        Some(Tok::EndMat) => {
                            self.pos += 1;
                            break;
                        }
                        Some(Tok::Amp) => {
                            self.pos += 1;
                        }
                        Some(Tok::RowSep) => {
                            self.pos += 1;
                            if !row.is_empty() {
                                rows.push(std::mem::take(&mut row));
                            }
                        }
                        None => return Err(ParseError::End),
                        _ => row.push(self.rel()?),
                    }
                }
                if !row.is_empty() {
                    rows.push(row);
                }
                Node::Matrix(rows)
            }
            Tok::Cmd(name) => self.command(&name)?,
            other => return Err(ParseError::Unexpected(format!("{other:?}"), self.pos - 1)),
        };
        self.depth -= 1;
        Ok(r)
    }

    fn command(&mut self, name: &str) -> Result<Node, ParseError> {
        Ok(match name {
            "frac" => {
                let a = self.arg()?;
                let b = self.arg()?;
                Node::Div(Box::new(a), Box::new(b))
            }
            "binom" => {
                let a = self.arg()?;
                let b = self.arg()?;
                Node::Func(Fun::Binom, vec![a, b])
            }
            "sqrt" => {
                let mut index = Node::num(2);
                if self.eat(&Tok::Op('[')) {
                    index = self.additive()?;
                    if !self.eat(&Tok::Op(']')) {
                        return Err(self.err());
                    }
                }
                let x = if self.peek() == Some(&Tok::Op('(')) { self.primary()? } else { self.arg()? };
                let e = match &index {
                    Node::Num(r) => {
                        r.recip().map(Node::Num).unwrap_or(Node::Div(Box::new(Node::num(1)), Box::new(index.clone())))
                    }
                    _ => Node::Div(Box::new(Node::num(1)), Box::new(index)),
                };
                Node::Pow(Box::new(x), Box::new(e))
            }
            "lfloor" | "lceil" => {
                let inner = self.additive()?;
                let close = if name == "lfloor" { "rfloor" } else { "rceil" };
                if !self.eat(&Tok::Cmd(close.into())) {
                    return Err(self.err());
                }
                Node::Func(if name == "lfloor" { Fun::Floor } else { Fun::Ceil }, vec![inner])
            }
            _ if FUNCS.contains(&name) => {
                let fun = match name {
                    "sin" => Fun::Sin,
                    "cos" => Fun::Cos,
                    "tan" => Fun::Tan,
                    "sec" => Fun::Sec,
                    "csc" => Fun::Csc,
                    "cot" => Fun::Cot,
                    "arcsin" | "asin" => Fun::Asin,
                    "arccos" | "acos" => Fun::Acos,
                    "arctan" | "atan" => Fun::Atan,
                    "sinh" => Fun::Sinh,
                    "cosh" => Fun::Cosh,
                    "tanh" => Fun::Tanh,
                    "ln" => Fun::Ln,
                    "log" => Fun::Log,
                    "exp" => Fun::Exp,
                    "abs" => Fun::Abs,
                    "max" => Fun::Max,
                    "min" => Fun::Min,
                    "gcd" => Fun::Gcd,
                    "lcm" => Fun::Lcm,
                    _ => Fun::Named(name.into()),
                };
                let mut base = None;
                let mut power = None;
                for _ in 0..2 {
                    if self.eat(&Tok::Op('_')) {
                        base = Some(self.arg()?);
                    } else if self.eat(&Tok::Op('^')) {
                        power = Some(self.exponent()?);
                    }
                }
                if matches!(fun, Fun::Max | Fun::Min | Fun::Gcd | Fun::Lcm) && self.eat(&Tok::Op('(')) {
                    let args = self.seq()?;
                    if !self.eat(&Tok::Op(')')) {
                        return Err(self.err());
                    }
                    return Ok(Node::Func(fun, args));
                }
                let x = self.func_arg()?;
                // sin^{-1} x is arcsin x.
                let inverse = matches!(&power, Some(Node::Neg(p)) if **p == Node::num(1));
                let fun = match (inverse, &fun) {
                    (true, Fun::Sin) => Fun::Asin,
                    (true, Fun::Cos) => Fun::Acos,
                    (true, Fun::Tan) => Fun::Atan,
                    _ => fun,
                };
                let app = match fun {
                    Fun::Log => Node::Func(Fun::Log, vec![base.unwrap_or(Node::num(10)), x]),
                    Fun::Named(ref n) if n == "sqrt" => Node::Pow(
                        Box::new(x),
                        Box::new(Node::Num(Rat::new(1.into(), 2.into()).unwrap_or_else(Rat::one))),
                    ),
                    f => Node::Func(f, vec![x]),
                };
                match power {
                    Some(p) if !inverse => Node::Pow(Box::new(app), Box::new(p)),
                    _ => app,
                }
            }
            _ if GREEK.contains(&name) => {
                let sub = self.subscript()?;
                Node::Sym(match sub {
                    Some(s) => format!("{name}_{s}"),
                    None => name.to_string(),
                })
            }
            "rfloor" | "rceil" => return Err(ParseError::Unexpected(name.into(), self.pos)),
            other => {
                // Unknown commands (\zzz, \angle, \triangle …) are symbols.
                let sub = self.subscript()?;
                Node::Sym(match sub {
                    Some(s) => format!("\\{other}_{s}"),
                    None => format!("\\{other}"),
                })
            }
        })
    }
}

/// In a product, words next to numbers are units (dropped); a product of words alone is text.
fn clean_text_factors(n: Node) -> Node {
    let Node::Mul(v) = n else { return n };
    let textish = |x: &Node| match x {
        Node::Text(_) => true,
        Node::Pow(b, _) => matches!(**b, Node::Text(_)),
        _ => false,
    };
    if !v.iter().any(textish) {
        return Node::Mul(v);
    }
    let all_words = v.iter().all(|x| matches!(x, Node::Text(_) | Node::Sym(_)));
    if all_words {
        let words: Vec<String> = v
            .iter()
            .map(|x| match x {
                Node::Text(t) => t.clone(),
                Node::Sym(s) => s.to_lowercase(),
                _ => String::new(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        return Node::Text(words.join(" "));
    }
    let kept: Vec<Node> = v.into_iter().filter(|x| !textish(x)).collect();
    if kept.len() == 1 { kept.into_iter().next().unwrap_or(Node::num(0)) } else { Node::Mul(kept) }
}

/// Parses one answer (already extracted from a response) into a tree.
pub fn parse(s: &str) -> Result<Node, ParseError> {
    if s.len() > limits::MAX_ANSWER_BYTES {
        return Err(ParseError::TooLong);
    }
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut p = Parser { toks, pos: 0, depth: 0, abs_depth: 0, nodes: 0 };
    let node = p.list()?;
    if p.pos < p.toks.len() {
        return Err(p.err());
    }
    if node.size() > limits::MAX_NODES {
        return Err(ParseError::TooDeep);
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::math::expr::exact;

    fn val(s: &str) -> String {
        let n = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        exact(&n).unwrap_or_else(|e| panic!("{s}: {e:?} {n:?}")).to_string()
    }

    #[test]
    fn numbers() {
        let cases = [
            ("42", "42"),
            ("-5", "-5"),
            ("7,425,000", "7425000"),
            ("1 000", "1000"),
            ("1000.0", "1000"),
            ("1,000.99", "100099/100"),
            ("1000,99", "100099/100"),
            ("0,111", "111/1000"),
            (".4", "2/5"),
            ("14{,}916", "14916"),
            ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
            ("1.5e3", "1500"),
            ("2.5 \\times 10^{-3}", "1/400"),
            ("\\$5", "5"),
            ("28\\%", "7/25"),
            ("90^\\circ", "90"),
            ("90^{\\circ}", "90"),
            ("\\text{13}", "13"),
            ("15\\mbox{ cm}^2", "15"),
            ("0.06 \\text{ yuan}", "3/50"),
            ("125\\textnormal{ miles}", "125"),
        ];
        for (s, want) in cases {
            assert_eq!(val(s), want, "{s}");
        }
    }

    #[test]
    fn fractions_roots_powers() {
        let cases = [
            ("\\frac{10}{9}", "10/9"),
            ("-\\frac{10}{9}", "-10/9"),
            ("\\frac13", "1/3"),
            ("\\frac3{3}", "1"),
            ("\\dfrac{1}{3}", "1/3"),
            ("\\tfrac{1}{3}", "1/3"),
            ("\\cfrac{1}{3}", "1/3"),
            ("\\left( \\frac{1}{3} \\right)", "1/3"),
            ("3/4", "3/4"),
            ("\\sqrt{16}", "4"),
            ("\\sqrt[3]{27}", "3"),
            ("2^{10}", "1024"),
            ("2^-1", "1/2"),
            ("5!", "120"),
            ("\\binom{5}{2}", "10"),
            ("\\dbinom{6}{3}", "20"),
            ("2 \\cdot 3", "6"),
            ("2 \\times 3", "6"),
            ("6 \\div 4", "3/2"),
            ("2(3+4)", "14"),
            ("(9+1)", "10"),
            ("|-3|", "3"),
            ("\\lfloor 2.5 \\rfloor", "2"),
            ("\\log_2 8", "3"),
            ("\\ln 1", "0"),
        ];
        for (s, want) in cases {
            assert_eq!(val(s), want, "{s}");
        }
    }

    #[test]
    fn structures() {
        assert!(matches!(parse("(1,2)").unwrap(), Node::Tuple(v) if v.len() == 2));
        assert!(matches!(parse("[0,1)").unwrap(), Node::Interval { lo_closed: true, hi_closed: false, .. }));
        assert!(matches!(parse("\\{1,2,3\\}").unwrap(), Node::Set(v) if v.len() == 3));
        assert!(matches!(parse("1, 2 and 3").unwrap(), Node::Set(v) if v.len() == 3));
        assert!(matches!(parse("(0,1) \\cup (2,3)").unwrap(), Node::Union(v) if v.len() == 2));
        assert!(
            matches!(parse("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}").unwrap(), Node::Matrix(r) if r.len() == 2 && r[0].len() == 2)
        );
        assert!(matches!(parse("x \\le 5").unwrap(), Node::Rel(_, ops) if ops == vec![RelOp::Le]));
        assert!(matches!(parse("x \\in [1,2]").unwrap(), Node::Interval { .. }));
        assert_eq!(parse("\\text{Evelyn}").unwrap(), Node::Text("evelyn".into()));
        assert_eq!(parse("\\text{(C)}").unwrap(), Node::Text("c".into()));
    }

    #[test]
    fn limits_are_errors_not_panics() {
        let deep = "(".repeat(5_000) + "1" + &")".repeat(5_000);
        assert_eq!(parse(&deep), Err(ParseError::TooDeep));
        let long = "1+".repeat(20_000) + "1";
        assert_eq!(parse(&long), Err(ParseError::TooLong));
        assert!(parse("\\frac{").is_err());
        assert!(parse("").is_err());
    }
}
