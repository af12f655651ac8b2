//! Expression rules: custom rules over sequence fields, in the manner of Cloudflare's
//! `cf.sequence.*` rules, written in CEL (the Common Expression Language).
//!
//! The `cel` crate parses (CEL's grammar, positions of every node); this module compiles
//! its tree into a typed evaluator over the fields below. The crate's own interpreter
//! spends 0.5–2 µs on a rule (operator lookup by name, boxed values, a context per call),
//! well above the 300 ns a rule may cost on the request path; the compiled form is a
//! small tree of enums evaluated without allocation, and types are checked when the
//! rule loads rather than on a request.

use cel::common::ast::{CallExpr, Expr, IdedExpr, LiteralValue, SourceInfo};

use crate::Nanos;
use crate::ops::{Catalog, OpId};
use crate::session::Entry;

/// What an expression can read about a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub op: OpId,
    /// The session's earlier operations in the rule lookback, oldest first.
    pub previous: &'a [Entry],
    pub now: Nanos,
    pub method: &'a str,
    /// Normalised as operations see it.
    pub host: &'a str,
    /// Normalised as servers route it.
    pub path: &'a str,
    pub session_requests: u64,
    pub session_age: Nanos,
    /// The session's requests to this operation in the current 10-minute window.
    pub op_requests: u64,
    /// Distinct path-variable values the session sent to this operation in the window.
    pub distinct_values: u64,
    pub enumeration_suspected: bool,
}

impl<'a> Facts<'a> {
    /// A request's sequence facts alone (the rest empty or zero).
    pub fn sequence(op: OpId, previous: &'a [Entry], now: Nanos) -> Self {
        Self {
            op,
            previous,
            now,
            method: "",
            host: "",
            path: "",
            session_requests: 0,
            session_age: 0,
            op_requests: 0,
            distinct_values: 0,
            enumeration_suspected: false,
        }
    }
}

/// The fields an expression may name, with their types (README "Expression rules").
pub const FIELDS: &[(&str, &str)] = &[
    ("sequence.current_op", "operation"),
    (
        "sequence.previous_ops",
        "list of operations, most recent first",
    ),
    ("sequence.msec_since_op", "map from operation to int"),
    ("http.request.method", "string"),
    ("http.host", "string"),
    ("http.request.uri.path", "string"),
    ("session.request_count", "int"),
    ("session.age_msec", "int"),
    ("session.op_requests_10m", "int"),
    ("session.distinct_values_10m", "int"),
    ("session.enumeration_suspected", "bool"),
];

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expression {
    root: B,
    /// The operations the expression can match at all, when it says so
    /// (`sequence.current_op == …` or `in […]` in every branch): the rule is only
    /// evaluated for requests to them, and only they are held for it.
    pub current_ops: Option<Vec<OpId>>,
}

/// Deepest nesting of comprehensions (`exists` inside `all`, …).
const MAX_SCOPES: usize = 4;

impl Expression {
    /// Parses and type-checks `source`; operations named by a string (id or
    /// `"METHOD host/path"`) resolve in `catalog`. The error says where.
    pub fn compile(source: &str, catalog: &mut Catalog) -> Result<Self, String> {
        // No macros: `exists(x, p)` stays the call it is written as, which the compiler
        // reads directly (the standard environment would expand it into a fold).
        let env = cel::Env::default();
        let (expr, info) = env
            .parser()
            .parse_with_source_info(source)
            .map_err(|e| parse_error(source, &e))?;
        let mut compiler = Compiler {
            catalog,
            info: &info,
            scopes: Vec::new(),
        };
        let root = match compiler.compile(&expr)? {
            T::B(b) => b,
            other => {
                return Err(compiler.at(
                    &expr,
                    format!("must be a bool condition, is {}", other.type_name()),
                ));
            }
        };
        let current_ops = guard(&root);
        Ok(Self { root, current_ops })
    }

    /// Whether the request matches. Never fails: a missing map entry or list index
    /// makes the comparison that reads it false.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let mut scope = [0 as OpId; MAX_SCOPES];
        self.root.eval(facts, &mut scope)
    }
}

/// A one-line parse error: where, then what (CEL's message without its drawing).
fn parse_error(source: &str, errors: &cel::ParseErrors) -> String {
    let Some(e) = errors.errors.first() else {
        return "does not parse".into();
    };
    let (line, column) = (e.pos.0.max(1) as usize, e.pos.1.max(1) as usize);
    format!("{}: {}", position(source, line, column), e.msg)
}

fn position(source: &str, line: usize, column: usize) -> String {
    if source.contains('\n') {
        format!("line {line}, column {column}")
    } else {
        format!("column {column}")
    }
}

/// Boolean nodes.
#[derive(Debug, Clone)]
enum B {
    Const(bool),
    Field(BoolField),
    Not(Box<B>),
    And(Box<B>, Box<B>),
    Or(Box<B>, Box<B>),
    If(Box<B>, Box<B>, Box<B>),
    Int(Box<I>, Cmp, Box<I>),
    Str(S, Cmp, S),
    StrIn(S, Box<[String]>),
    StrTest(S, StrTest, String),
    Matches(S, Box<regex::Regex>),
    Op(O, bool, O),
    OpIn(O, Box<[OpId]>),
    /// The operation is among the session's previous ones (a list or map `in`).
    OpInPrevious(O),
    /// Over the previous operations, most recent first; the element is bound in the
    /// given scope.
    Any(usize, Box<B>),
    All(usize, Box<B>),
    ExactlyOne(usize, Box<B>),
    BoolEq(Box<B>, bool, Box<B>),
}

#[derive(Debug, Clone, Copy)]
enum BoolField {
    EnumerationSuspected,
}

/// Integer nodes; `None` when the value is missing (a map key the session never called).
#[derive(Debug, Clone)]
enum I {
    Const(i64),
    Field(IntField),
    MsecSince(O),
    PreviousCount,
    /// `size(previous_ops.filter(x, p))`.
    Count(usize, Box<B>),
    StrLen(S),
    Add(Box<I>, Box<I>),
    Sub(Box<I>, Box<I>),
    Mul(Box<I>, Box<I>),
    Neg(Box<I>),
}

#[derive(Debug, Clone, Copy)]
enum IntField {
    SessionRequests,
    SessionAgeMsec,
    OpRequests,
    DistinctValues,
}

/// Operation nodes; `None` when missing (an index past the list).
#[derive(Debug, Clone, Copy)]
enum O {
    Const(OpId),
    Current,
    Scope(usize),
    /// `previous_ops[i]`, most recent first.
    Previous(usize),
}

#[derive(Debug, Clone)]
enum S {
    Const(String),
    Method,
    Host,
    Path,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn of(function: &str) -> Option<Self> {
        use cel::common::ast::operators as op;
        Some(match function {
            op::EQUALS => Self::Eq,
            op::NOT_EQUALS => Self::Ne,
            op::LESS => Self::Lt,
            op::LESS_EQUALS => Self::Le,
            op::GREATER => Self::Gt,
            op::GREATER_EQUALS => Self::Ge,
            _ => return None,
        })
    }

    fn holds<T: Ord>(self, a: T, b: T) -> bool {
        match self {
            Self::Eq => a == b,
            Self::Ne => a != b,
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum StrTest {
    StartsWith,
    EndsWith,
    Contains,
}

/// Previous operations, most recent first.
fn previous<'a>(f: &'a Facts<'_>) -> impl Iterator<Item = &'a Entry> {
    f.previous.iter().rev()
}

impl B {
    fn eval(&self, f: &Facts<'_>, scope: &mut [OpId; MAX_SCOPES]) -> bool {
        match self {
            B::Const(b) => *b,
            B::Field(BoolField::EnumerationSuspected) => f.enumeration_suspected,
            B::Not(b) => !b.eval(f, scope),
            B::And(a, b) => a.eval(f, scope) && b.eval(f, scope),
            B::Or(a, b) => a.eval(f, scope) || b.eval(f, scope),
            B::If(c, a, b) => {
                if c.eval(f, scope) {
                    a.eval(f, scope)
                } else {
                    b.eval(f, scope)
                }
            }
            B::Int(a, cmp, b) => match (a.eval(f, scope), b.eval(f, scope)) {
                (Some(a), Some(b)) => cmp.holds(a, b),
                _ => false,
            },
            B::Str(a, cmp, b) => cmp.holds(a.eval(f), b.eval(f)),
            B::StrIn(s, list) => {
                let s = s.eval(f);
                list.iter().any(|l| l == s)
            }
            B::StrTest(s, test, arg) => {
                let s = s.eval(f);
                match test {
                    StrTest::StartsWith => s.starts_with(arg.as_str()),
                    StrTest::EndsWith => s.ends_with(arg.as_str()),
                    StrTest::Contains => s.contains(arg.as_str()),
                }
            }
            B::Matches(s, re) => re.is_match(s.eval(f)),
            B::Op(a, equal, b) => match (a.eval(f, scope), b.eval(f, scope)) {
                (Some(a), Some(b)) => (a == b) == *equal,
                _ => false,
            },
            B::OpIn(o, list) => o.eval(f, scope).is_some_and(|o| list.contains(&o)),
            B::OpInPrevious(o) => o
                .eval(f, scope)
                .is_some_and(|o| f.previous.iter().any(|e| e.op == o)),
            B::Any(depth, p) => previous(f).any(|e| {
                scope[*depth] = e.op;
                p.eval(f, scope)
            }),
            B::All(depth, p) => previous(f).all(|e| {
                scope[*depth] = e.op;
                p.eval(f, scope)
            }),
            B::ExactlyOne(depth, p) => {
                previous(f)
                    .filter(|e| {
                        scope[*depth] = e.op;
                        p.eval(f, scope)
                    })
                    .count()
                    == 1
            }
            B::BoolEq(a, equal, b) => (a.eval(f, scope) == b.eval(f, scope)) == *equal,
        }
    }
}

impl I {
    fn eval(&self, f: &Facts<'_>, scope: &mut [OpId; MAX_SCOPES]) -> Option<i64> {
        let sat = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Some(match self {
            I::Const(n) => *n,
            I::Field(IntField::SessionRequests) => sat(f.session_requests),
            I::Field(IntField::SessionAgeMsec) => sat(f.session_age / 1_000_000),
            I::Field(IntField::OpRequests) => sat(f.op_requests),
            I::Field(IntField::DistinctValues) => sat(f.distinct_values),
            I::MsecSince(o) => {
                let o = o.eval(f, scope)?;
                let at = previous(f).find(|e| e.op == o)?.at;
                sat(f.now.saturating_sub(at) / 1_000_000)
            }
            I::PreviousCount => f.previous.len() as i64,
            I::Count(depth, p) => previous(f)
                .filter(|e| {
                    scope[*depth] = e.op;
                    p.eval(f, scope)
                })
                .count() as i64,
            I::StrLen(s) => s.eval(f).chars().count() as i64,
            I::Add(a, b) => a.eval(f, scope)?.saturating_add(b.eval(f, scope)?),
            I::Sub(a, b) => a.eval(f, scope)?.saturating_sub(b.eval(f, scope)?),
            I::Mul(a, b) => a.eval(f, scope)?.saturating_mul(b.eval(f, scope)?),
            I::Neg(a) => a.eval(f, scope)?.saturating_neg(),
        })
    }
}

impl O {
    fn eval(self, f: &Facts<'_>, scope: &[OpId; MAX_SCOPES]) -> Option<OpId> {
        match self {
            O::Const(op) => Some(op),
            O::Current => Some(f.op),
            O::Scope(depth) => Some(scope[depth]),
            O::Previous(i) => previous(f).nth(i).map(|e| e.op),
        }
    }
}

impl S {
    fn eval<'a>(&'a self, f: &Facts<'a>) -> &'a str {
        match self {
            S::Const(s) => s,
            S::Method => f.method,
            S::Host => f.host,
            S::Path => f.path,
        }
    }
}

/// The operations a condition can only hold for, if it names them.
fn guard(b: &B) -> Option<Vec<OpId>> {
    match b {
        B::Op(O::Current, true, O::Const(op)) | B::Op(O::Const(op), true, O::Current) => {
            Some(vec![*op])
        }
        B::OpIn(O::Current, ops) => Some(ops.to_vec()),
        B::And(a, b) => match (guard(a), guard(b)) {
            (Some(a), Some(b)) => Some(a.into_iter().filter(|op| b.contains(op)).collect()),
            (a, b) => a.or(b),
        },
        B::Or(a, b) => {
            let mut ops = guard(a)?;
            ops.extend(guard(b)?);
            ops.sort_unstable();
            ops.dedup();
            Some(ops)
        }
        B::Const(false) => Some(Vec::new()),
        _ => None,
    }
}

/// A typed node.
#[derive(Debug, Clone)]
enum T {
    B(B),
    I(I),
    O(O),
    S(S),
    /// A string that may also name an operation, decided by where it is used.
    Lit(String),
    List(Vec<T>),
    PreviousOps,
    MsecSinceOp,
}

impl T {
    fn type_name(&self) -> &'static str {
        match self {
            T::B(_) => "bool",
            T::I(_) => "int",
            T::O(_) => "operation",
            T::S(_) | T::Lit(_) => "string",
            T::List(_) => "list",
            T::PreviousOps => "list of operations",
            T::MsecSinceOp => "map from operation to int",
        }
    }
}

struct Compiler<'c> {
    catalog: &'c mut Catalog,
    info: &'c SourceInfo,
    /// Comprehension variables in scope, innermost last.
    scopes: Vec<String>,
}

impl Compiler<'_> {
    /// An error at `expr`'s position.
    fn at(&self, expr: &IdedExpr, message: String) -> String {
        let source = &self.info.source;
        let offset = self
            .info
            .offset_for(expr.id)
            .map_or(0, |(start, _)| start as usize);
        let before: String = source.chars().take(offset).collect();
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}: {message}", position(source, line, column))
    }

    fn compile(&mut self, e: &IdedExpr) -> Result<T, String> {
        match &e.expr {
            Expr::Literal(lit) => match lit {
                LiteralValue::Boolean(b) => Ok(T::B(B::Const(*b.inner()))),
                LiteralValue::Int(n) => Ok(T::I(I::Const(*n.inner()))),
                LiteralValue::UInt(n) => i64::try_from(*n.inner())
                    .map(|n| T::I(I::Const(n)))
                    .map_err(|_| self.at(e, "integer too large".into())),
                LiteralValue::String(s) => Ok(T::Lit(s.inner().to_string())),
                _ => Err(self.at(e, "only bool, int and string literals are supported".into())),
            },
            Expr::Ident(_) | Expr::Select(_) => self.name(e),
            Expr::List(list) => {
                let items = list
                    .elements
                    .iter()
                    .map(|item| self.compile(item))
                    .collect::<Result<_, _>>()?;
                Ok(T::List(items))
            }
            Expr::Call(call) => self.call(e, call),
            _ => Err(self.at(e, "not supported in rules (maps, structs)".into())),
        }
    }

    /// A field or a comprehension variable.
    fn name(&mut self, e: &IdedExpr) -> Result<T, String> {
        let Some(name) = dotted(&e.expr) else {
            return Err(self.at(e, "fields are selected only on the documented names".into()));
        };
        if let Some(depth) = self.scopes.iter().rposition(|s| *s == name) {
            return Ok(T::O(O::Scope(depth)));
        }
        Ok(match name.as_str() {
            "sequence.current_op" => T::O(O::Current),
            "sequence.previous_ops" => T::PreviousOps,
            "sequence.msec_since_op" => T::MsecSinceOp,
            "http.request.method" => T::S(S::Method),
            "http.host" => T::S(S::Host),
            "http.request.uri.path" => T::S(S::Path),
            "session.request_count" => T::I(I::Field(IntField::SessionRequests)),
            "session.age_msec" => T::I(I::Field(IntField::SessionAgeMsec)),
            "session.op_requests_10m" => T::I(I::Field(IntField::OpRequests)),
            "session.distinct_values_10m" => T::I(I::Field(IntField::DistinctValues)),
            "session.enumeration_suspected" => T::B(B::Field(BoolField::EnumerationSuspected)),
            _ => {
                let known: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
                return Err(self.at(
                    e,
                    format!("unknown field {name} (fields: {})", known.join(", ")),
                ));
            }
        })
    }

    fn bool(&mut self, e: &IdedExpr) -> Result<B, String> {
        match self.compile(e)? {
            T::B(b) => Ok(b),
            other => Err(self.at(e, format!("expected a bool, got {}", other.type_name()))),
        }
    }

    fn int(&mut self, e: &IdedExpr) -> Result<I, String> {
        match self.compile(e)? {
            T::I(i) => Ok(i),
            other => Err(self.at(e, format!("expected an int, got {}", other.type_name()))),
        }
    }

    fn string(&mut self, e: &IdedExpr) -> Result<S, String> {
        match self.compile(e)? {
            T::S(s) => Ok(s),
            T::Lit(s) => Ok(S::Const(s)),
            other => Err(self.at(e, format!("expected a string, got {}", other.type_name()))),
        }
    }

    /// A string literal where an operation is expected: its id or human form.
    fn op_literal(&mut self, e: &IdedExpr, name: &str) -> Result<OpId, String> {
        self.catalog
            .lookup_for_rule(name)
            .map_err(|reason| self.at(e, reason))
    }

    fn as_op(&mut self, e: &IdedExpr, t: T) -> Result<O, String> {
        match t {
            T::O(o) => Ok(o),
            T::Lit(name) => Ok(O::Const(self.op_literal(e, &name)?)),
            other => Err(self.at(
                e,
                format!("expected an operation, got {}", other.type_name()),
            )),
        }
    }

    fn call(&mut self, e: &IdedExpr, call: &CallExpr) -> Result<T, String> {
        use cel::common::ast::operators as op;
        let args = &call.args;
        let name = call.func_name.as_str();
        if let Some(target) = &call.target {
            return self.method(e, name, target, args);
        }
        match (name, args.as_slice()) {
            (op::LOGICAL_AND, [a, b]) => Ok(T::B(B::And(
                Box::new(self.bool(a)?),
                Box::new(self.bool(b)?),
            ))),
            (op::LOGICAL_OR, [a, b]) => Ok(T::B(B::Or(
                Box::new(self.bool(a)?),
                Box::new(self.bool(b)?),
            ))),
            (op::LOGICAL_NOT, [a]) => Ok(T::B(B::Not(Box::new(self.bool(a)?)))),
            (op::CONDITIONAL, [c, a, b]) => Ok(T::B(B::If(
                Box::new(self.bool(c)?),
                Box::new(self.bool(a)?),
                Box::new(self.bool(b)?),
            ))),
            (op::NEGATE, [a]) => Ok(T::I(I::Neg(Box::new(self.int(a)?)))),
            (op::ADD | op::SUBSTRACT | op::MULTIPLY, [a, b]) => {
                let (a, b) = (Box::new(self.int(a)?), Box::new(self.int(b)?));
                Ok(T::I(match name {
                    op::ADD => I::Add(a, b),
                    op::SUBSTRACT => I::Sub(a, b),
                    _ => I::Mul(a, b),
                }))
            }
            (op::IN, [item, list]) => self.contains(e, item, list),
            (op::INDEX, [target, index]) => self.index(e, target, index),
            ("size", [a]) => self.size(e, a),
            (_, [a, b]) if Cmp::of(name).is_some() => {
                self.compare(e, Cmp::of(name).expect("checked"), a, b)
            }
            _ => Err(self.at(e, format!("unsupported function {}", display_name(name)))),
        }
    }

    fn compare(&mut self, e: &IdedExpr, cmp: Cmp, a: &IdedExpr, b: &IdedExpr) -> Result<T, String> {
        let (ta, tb) = (self.compile(a)?, self.compile(b)?);
        let equality = matches!(cmp, Cmp::Eq | Cmp::Ne);
        let node = match (ta, tb) {
            (T::I(x), T::I(y)) => B::Int(Box::new(x), cmp, Box::new(y)),
            (T::O(x), T::O(y)) if equality => B::Op(x, cmp == Cmp::Eq, y),
            (T::O(x), T::Lit(name)) if equality => {
                B::Op(x, cmp == Cmp::Eq, O::Const(self.op_literal(b, &name)?))
            }
            (T::Lit(name), T::O(y)) if equality => {
                B::Op(O::Const(self.op_literal(a, &name)?), cmp == Cmp::Eq, y)
            }
            (x @ (T::S(_) | T::Lit(_)), y @ (T::S(_) | T::Lit(_))) => B::Str(lit(x)?, cmp, lit(y)?),
            (T::B(x), T::B(y)) if equality => B::BoolEq(Box::new(x), cmp == Cmp::Eq, Box::new(y)),
            (x, y) => {
                return Err(self.at(
                    e,
                    format!("cannot compare {} with {}", x.type_name(), y.type_name()),
                ));
            }
        };
        Ok(T::B(node))
    }

    /// `item in list` (or in the map's keys).
    fn contains(&mut self, e: &IdedExpr, item: &IdedExpr, list: &IdedExpr) -> Result<T, String> {
        let t_item = self.compile(item)?;
        match self.compile(list)? {
            T::PreviousOps | T::MsecSinceOp => Ok(T::B(B::OpInPrevious(self.as_op(item, t_item)?))),
            T::List(items) => match t_item {
                T::O(o) => {
                    let mut ops = Vec::with_capacity(items.len());
                    for (t, element) in items.into_iter().zip(list_elements(list)) {
                        let O::Const(op) = self.as_op(element, t)? else {
                            return Err(self.at(element, "list items must be literals".into()));
                        };
                        ops.push(op);
                    }
                    Ok(T::B(B::OpIn(o, ops.into())))
                }
                T::S(_) | T::Lit(_) => {
                    let s = lit(t_item)?;
                    let mut strings = Vec::with_capacity(items.len());
                    for (t, element) in items.into_iter().zip(list_elements(list)) {
                        let T::Lit(item) = t else {
                            return Err(
                                self.at(element, "list items must be string literals".into())
                            );
                        };
                        strings.push(item);
                    }
                    Ok(T::B(B::StrIn(s, strings.into())))
                }
                other => Err(self.at(
                    item,
                    format!(
                        "`in` a list takes an operation or a string, got {}",
                        other.type_name()
                    ),
                )),
            },
            other => Err(self.at(
                e,
                format!("`in` needs a list or a map, got {}", other.type_name()),
            )),
        }
    }

    fn index(&mut self, e: &IdedExpr, target: &IdedExpr, index: &IdedExpr) -> Result<T, String> {
        match self.compile(target)? {
            T::MsecSinceOp => {
                let key = self.compile(index)?;
                Ok(T::I(I::MsecSince(self.as_op(index, key)?)))
            }
            T::PreviousOps => match self.compile(index)? {
                T::I(I::Const(i)) if i >= 0 => Ok(T::O(O::Previous(i as usize))),
                _ => Err(self.at(index, "index with a non-negative int literal".into())),
            },
            other => Err(self.at(e, format!("cannot index {}", other.type_name()))),
        }
    }

    fn size(&mut self, e: &IdedExpr, a: &IdedExpr) -> Result<T, String> {
        if let Expr::Call(call) = &a.expr
            && call.func_name == "filter"
            && let Some(target) = &call.target
        {
            let (depth, p) = self.comprehension(a, target, &call.args)?;
            return Ok(T::I(I::Count(depth, Box::new(p))));
        }
        match self.compile(a)? {
            T::PreviousOps | T::MsecSinceOp => Ok(T::I(I::PreviousCount)),
            T::S(s) => Ok(T::I(I::StrLen(s))),
            T::Lit(s) => Ok(T::I(I::Const(s.chars().count() as i64))),
            T::List(items) => Ok(T::I(I::Const(items.len() as i64))),
            other => Err(self.at(e, format!("no size of {}", other.type_name()))),
        }
    }

    /// `previous_ops.exists(x, p)` and the like: the scope `x` gets, and `p`.
    fn comprehension(
        &mut self,
        e: &IdedExpr,
        target: &IdedExpr,
        args: &[IdedExpr],
    ) -> Result<(usize, B), String> {
        let [var, predicate] = args else {
            return Err(self.at(e, "takes a variable and a condition: (x, …)".into()));
        };
        if !matches!(self.compile(target)?, T::PreviousOps | T::MsecSinceOp) {
            return Err(self.at(
                target,
                "comprehensions run over sequence.previous_ops (or the keys of sequence.msec_since_op)"
                    .into(),
            ));
        }
        let Expr::Ident(name) = &var.expr else {
            return Err(self.at(var, "expected a variable name".into()));
        };
        if self.scopes.len() == MAX_SCOPES {
            return Err(self.at(e, format!("at most {MAX_SCOPES} nested comprehensions")));
        }
        self.scopes.push(name.clone());
        let depth = self.scopes.len() - 1;
        let p = self.bool(predicate);
        self.scopes.pop();
        Ok((depth, p?))
    }

    fn method(
        &mut self,
        e: &IdedExpr,
        name: &str,
        target: &IdedExpr,
        args: &[IdedExpr],
    ) -> Result<T, String> {
        match name {
            "exists" | "all" | "exists_one" => {
                let (depth, p) = self.comprehension(e, target, args)?;
                let p = Box::new(p);
                Ok(T::B(match name {
                    "exists" => B::Any(depth, p),
                    "all" => B::All(depth, p),
                    _ => B::ExactlyOne(depth, p),
                }))
            }
            "size" if args.is_empty() => self.size(e, target),
            "startsWith" | "endsWith" | "contains" | "matches" => {
                let s = self.string(target)?;
                let [arg] = args else {
                    return Err(self.at(e, format!("{name} takes one string")));
                };
                let Expr::Literal(LiteralValue::String(arg_text)) = &arg.expr else {
                    return Err(self.at(arg, format!("{name} takes a string literal")));
                };
                let arg_text = arg_text.inner().to_string();
                Ok(T::B(match name {
                    "startsWith" => B::StrTest(s, StrTest::StartsWith, arg_text),
                    "endsWith" => B::StrTest(s, StrTest::EndsWith, arg_text),
                    "contains" => B::StrTest(s, StrTest::Contains, arg_text),
                    _ => {
                        let re = regex::Regex::new(&arg_text)
                            .map_err(|err| self.at(arg, format!("bad regex: {err}")))?;
                        B::Matches(s, Box::new(re))
                    }
                }))
            }
            "filter" => Err(self.at(e, "filter is supported inside size(…)".into())),
            _ => Err(self.at(e, format!("unsupported method {name}"))),
        }
    }
}

/// A string-typed node from one that may be a literal.
fn lit(t: T) -> Result<S, String> {
    match t {
        T::S(s) => Ok(s),
        T::Lit(s) => Ok(S::Const(s)),
        other => Err(format!("expected a string, got {}", other.type_name())),
    }
}

fn list_elements(list: &IdedExpr) -> &[IdedExpr] {
    match &list.expr {
        Expr::List(l) => &l.elements,
        _ => &[],
    }
}

/// `a.b.c` for an identifier and selections on it.
fn dotted(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(s) if !s.test => Some(format!("{}.{}", dotted(&s.operand.expr)?, s.field)),
        _ => None,
    }
}

/// `_<=_` → `<=`, for messages.
fn display_name(function: &str) -> &str {
    function.trim_matches('_').trim_start_matches('@')
}

#[cfg(test)]
mod tests;
