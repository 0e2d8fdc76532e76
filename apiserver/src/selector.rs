//! Label and field selectors with apimachinery semantics.
//!
//! - [`LabelSelector`] parses the `labelSelector` query syntax (`k8s.io/apimachinery/pkg/labels`):
//!   `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<3`, comma = AND.
//!   The lexer and parser follow the Go implementation token for token, so error messages read
//!   the same (`unable to parse requirement: <nil>: Invalid value: "a b": ...`,
//!   `found 'x', expected: ',' or ')'`).
//! - [`FieldSelector`] parses the `fieldSelector` syntax (`k8s.io/apimachinery/pkg/fields`):
//!   `f=v`, `f==v`, `f!=v`, comma = AND, values escaped with `\,` `\=` `\\`. Fields are limited
//!   to `metadata.name`, `metadata.namespace` and the resource's selectable fields, like a CRD
//!   with `selectableFields`; anything else is `field label not supported: <field>`.
//!
//! Both selectors also produce *index terms* — strings a store can keep sets for and intersect
//! before filtering with `matches`:
//!
//! | term          | meaning                                               |
//! |---------------|-------------------------------------------------------|
//! | `l:<k>=<v>`   | label `k` has value `v`                                |
//! | `lk:<k>`      | label `k` exists                                       |
//! | `f:<f>=<v>`   | selectable field `f` (dotted path) has value `v`       |
//!
//! [`object_terms`] lists every term of a stored object; a selector's terms are always a subset
//! of the terms of each object it matches.

use std::collections::BTreeSet;
use std::fmt;

use crds::resources::ResourceInfo;
use crds::validation::{label_value, qualified_name};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::{Map, Value};

/// Why a selector was rejected. `Display` is the text Kubernetes puts in its `Status.message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The label selector's syntax is wrong (`found ',', expected: identifier`).
    #[error("{message}")]
    LabelSyntax { message: String },
    /// A requirement of a label selector could not be parsed.
    #[error("unable to parse requirement: {source}")]
    Requirement {
        #[source]
        source: Box<SelectorError>,
    },
    /// Key, values or operator of a requirement are invalid; one entry per `field.Error`,
    /// joined like apimachinery's error aggregate.
    #[error("{}", aggregate(.errors))]
    InvalidRequirement { errors: Vec<String> },
    /// A `matchExpressions` operator that is not In, NotIn, Exists or DoesNotExist.
    #[error("{operator:?} is not a valid label selector operator")]
    InvalidOperator { operator: String },
    /// A field selector term without an operator.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    FieldSyntax { selector: String, term: String },
    /// A backslash not followed by `\`, `,` or `=`.
    #[error("invalid field selector: invalid escape sequence: {sequence}")]
    InvalidEscape { sequence: String },
    /// A bare `,` or `=` inside a field selector value. Go prints the rune as its code point.
    #[error("invalid field selector: unescapedRune character in value: {}", *.rune as u32)]
    UnescapedRune { rune: char },
    /// A field that cannot be selected on for this resource.
    #[error("field label not supported: {field}")]
    FieldLabelNotSupported { field: String },
}

/// apimachinery's `utilerrors.NewAggregate(...).Error()`: one message as is, several
/// deduplicated, comma-separated and bracketed.
fn aggregate(errors: &[String]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for e in errors {
        if !seen.contains(&e.as_str()) {
            seen.push(e);
        }
    }
    match seen.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// A label selector operator (`selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// Which path a requirement's validation errors are reported under: the string parser passes
/// no path (`<nil>` for the key, `values[i][key]` for values), `LabelSelectorAsSelector`
/// reports the key as `key`.
#[derive(Clone, Copy)]
enum KeyPath {
    Nil,
    Key,
}

/// Renders a `[]string` the way Go's `%#v` does, for `field.Invalid` on a value list.
fn go_string_slice(values: &[String]) -> String {
    if values.is_empty() {
        return "[]string(nil)".to_string();
    }
    let items: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[]string{{{}}}", items.join(", "))
}

fn validate_key(key: &str, path: KeyPath) -> Option<String> {
    let errs = qualified_name(key);
    if errs.is_empty() {
        return None;
    }
    let field = match path {
        KeyPath::Nil => "<nil>",
        KeyPath::Key => "key",
    };
    Some(format!(
        "{field}: Invalid value: {key:?}: {}",
        errs.join("; ")
    ))
}

impl Requirement {
    /// `labels.NewRequirement`: validates and builds.
    fn new(key: &str, op: Op, values: Vec<String>, path: KeyPath) -> Result<Self, SelectorError> {
        let mut errors = Vec::new();
        if let Some(e) = validate_key(key, path) {
            errors.push(e);
        }
        match op {
            Op::In | Op::NotIn if values.is_empty() => errors.push(format!(
                "values: Invalid value: {}: for 'in', 'notin' operators, values set can't be empty",
                go_string_slice(&values)
            )),
            Op::Equals | Op::DoubleEquals | Op::NotEquals if values.len() != 1 => {
                errors.push(format!(
                    "values: Invalid value: {}: exact-match compatibility requires one single value",
                    go_string_slice(&values)
                ))
            }
            Op::Exists | Op::DoesNotExist if !values.is_empty() => errors.push(format!(
                "values: Invalid value: {}: values set must be empty for exists and does not exist",
                go_string_slice(&values)
            )),
            Op::GreaterThan | Op::LessThan => {
                if values.len() != 1 {
                    errors.push(format!(
                        "values: Invalid value: {}: for 'Gt', 'Lt' operators, exactly one value is required",
                        go_string_slice(&values)
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errors.push(format!(
                            "values[{i}]: Invalid value: {v:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let errs = label_value(v);
            if !errs.is_empty() {
                errors.push(format!(
                    "values[{i}][{key}]: Invalid value: {v:?}: {}",
                    errs.join("; ")
                ));
            }
        }
        if !errors.is_empty() {
            return Err(SelectorError::InvalidRequirement { errors });
        }
        Ok(Self {
            key: key.to_string(),
            op,
            values,
        })
    }

    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let value = labels
            .and_then(|l| l.get(&self.key))
            .and_then(Value::as_str);
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.op {
            Op::In | Op::Equals | Op::DoubleEquals => value.is_some_and(has),
            Op::NotIn | Op::NotEquals => !value.is_some_and(has),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
            Op::GreaterThan | Op::LessThan => {
                let (Some(actual), [wanted]) = (value, self.values.as_slice()) else {
                    return false;
                };
                match (actual.parse::<i64>(), wanted.parse::<i64>()) {
                    (Ok(a), Ok(w)) if self.op == Op::GreaterThan => a > w,
                    (Ok(a), Ok(w)) => a < w,
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op == Op::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.op {
            Op::Equals => "=",
            Op::DoubleEquals => "==",
            Op::NotEquals => "!=",
            Op::In => " in ",
            Op::NotIn => " notin ",
            Op::GreaterThan => ">",
            Op::LessThan => "<",
            Op::Exists | Op::DoesNotExist => return Ok(()),
        };
        f.write_str(op)?;
        let mut values = self.values.clone();
        values.sort();
        if matches!(self.op, Op::In | Op::NotIn) {
            write!(f, "({})", values.join(","))
        } else {
            f.write_str(&values.join(","))
        }
    }
}

/// A parsed label selector: the AND of its requirements. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax. The empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser {
            items: Lexer { s, pos: 0 }.scan(),
            pos: 0,
        };
        let mut requirements = parser.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    /// `metav1.LabelSelectorAsSelector`: `matchLabels` and `matchExpressions`, ANDed. A
    /// selector with neither selects everything.
    pub fn from_label_selector(sel: &metav1::LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::new(
                k,
                Op::Equals,
                vec![v.clone()],
                KeyPath::Key,
            )?);
        }
        for expr in sel.match_expressions.iter().flatten() {
            let op = match expr.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(SelectorError::InvalidOperator {
                        operator: other.to_string(),
                    });
                }
            };
            requirements.push(Requirement::new(
                &expr.key,
                op,
                expr.values.clone().unwrap_or_default(),
                KeyPath::Key,
            )?);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    /// Whether a label set satisfies every requirement. Absent labels are an empty set.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// [`matches`](Self::matches) on `metadata.labels` of an object.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }

    /// Terms every matching object has (see the module doc): `l:<k>=<v>` for `=`, `==` and
    /// single-valued `in`, `lk:<k>` for every other requirement that needs the key to exist.
    /// Callers still filter with [`matches`](Self::matches).
    pub fn index_terms(&self) -> Vec<String> {
        let mut terms = BTreeSet::new();
        for r in &self.requirements {
            match (r.op, r.values.as_slice()) {
                (Op::Equals | Op::DoubleEquals | Op::In, [v]) => {
                    terms.insert(format!("l:{}={v}", r.key));
                }
                (Op::In | Op::Exists | Op::GreaterThan | Op::LessThan, _) => {
                    terms.insert(format!("lk:{}", r.key));
                }
                _ => {}
            }
        }
        terms.into_iter().collect()
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// The canonical string form (`labels.Selector.String()`): requirements sorted by key.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

// ---- label selector lexer and parser (a port of apimachinery's labels/selector.go) ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Error,
    EndOfString,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn literal_token(s: &str) -> Option<Token> {
    Some(match s {
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        "!" => Token::DoesNotExist,
        "==" => Token::DoubleEquals,
        "=" => Token::Equals,
        ">" => Token::GreaterThan,
        "in" => Token::In,
        "<" => Token::LessThan,
        "!=" => Token::NotEquals,
        "notin" => Token::NotIn,
        "(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special_symbol(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl Lexer<'_> {
    /// The next byte, or 0 at the end (as in Go, a NUL byte also ends the input).
    fn read(&mut self) -> u8 {
        match self.s.as_bytes().get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                b
            }
            None => 0,
        }
    }

    fn unread(&mut self) {
        self.pos -= 1;
    }

    fn scan_id_or_keyword(&mut self) -> (Token, String) {
        let start = self.pos;
        loop {
            let c = self.read();
            if c == 0 {
                break;
            }
            if is_special_symbol(c) || is_whitespace(c) {
                self.unread();
                break;
            }
        }
        // Only ASCII bytes end an identifier, so the slice is on char boundaries.
        let end = self.pos.min(self.s.len());
        let lit = self.s[start..end].trim_end_matches('\0').to_string();
        match literal_token(&lit) {
            Some(t) => (t, lit),
            None => (Token::Identifier, lit),
        }
    }

    fn scan_special_symbol(&mut self) -> (Token, String) {
        let mut last: Option<(Token, String)> = None;
        let mut buffer = String::new();
        loop {
            let c = self.read();
            if c == 0 {
                break;
            }
            if is_special_symbol(c) {
                buffer.push(c as char);
                if let Some(t) = literal_token(&buffer) {
                    last = Some((t, buffer.clone()));
                } else if last.is_some() {
                    self.unread();
                    break;
                }
            } else {
                self.unread();
                break;
            }
        }
        match last {
            Some(item) => item,
            None => (
                Token::Error,
                format!("error expected: keyword found '{buffer}'"),
            ),
        }
    }

    fn lex(&mut self) -> (Token, String) {
        let mut c = self.read();
        while is_whitespace(c) {
            c = self.read();
        }
        if c == 0 {
            return (Token::EndOfString, String::new());
        }
        self.unread();
        if is_special_symbol(c) {
            self.scan_special_symbol()
        } else {
            self.scan_id_or_keyword()
        }
    }

    fn scan(mut self) -> Vec<(Token, String)> {
        let mut items = Vec::new();
        loop {
            let item = self.lex();
            let end = item.0 == Token::EndOfString;
            items.push(item);
            if end {
                return items;
            }
        }
    }
}

/// Whether `in`/`notin` are keywords (`KeyAndOperator`) or plain identifiers (`Values`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser {
    items: Vec<(Token, String)>,
    pos: usize,
}

fn syntax(message: String) -> SelectorError {
    SelectorError::LabelSyntax { message }
}

impl Parser {
    fn lookahead(&self, ctx: Context) -> (Token, String) {
        // The scanned items always end with EndOfString, and nothing consumes past it.
        let (tok, lit) = self
            .items
            .get(self.pos)
            .cloned()
            .unwrap_or((Token::EndOfString, String::new()));
        (Self::in_context(tok, ctx), lit)
    }

    fn consume(&mut self, ctx: Context) -> (Token, String) {
        let item = self.lookahead(ctx);
        self.pos += 1;
        item
    }

    fn in_context(tok: Token, ctx: Context) -> Token {
        match tok {
            Token::In | Token::NotIn if ctx == Context::Values => Token::Identifier,
            t => t,
        }
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Context::Values);
            match tok {
                Token::Identifier | Token::DoesNotExist => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| SelectorError::Requirement {
                            source: Box::new(e),
                        })?;
                    requirements.push(r);
                    let (t, l) = self.consume(Context::Values);
                    match t {
                        Token::EndOfString => return Ok(requirements),
                        Token::Comma => {
                            let (t2, l2) = self.lookahead(Context::Values);
                            if t2 != Token::Identifier && t2 != Token::DoesNotExist {
                                return Err(syntax(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(syntax(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )));
                        }
                    }
                }
                Token::EndOfString => return Ok(requirements),
                _ => {
                    return Err(syntax(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Op::Exists | Op::DoesNotExist)) = op {
            return Requirement::new(&key, op, Vec::new(), KeyPath::Nil);
        }
        let op = self.parse_operator()?;
        let values = match op {
            Op::In | Op::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values.into_iter().collect(), KeyPath::Nil)
    }

    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Op>), SelectorError> {
        let mut op = None;
        let (mut tok, mut lit) = self.consume(Context::Values);
        if tok == Token::DoesNotExist {
            op = Some(Op::DoesNotExist);
            (tok, lit) = self.consume(Context::Values);
        }
        if tok != Token::Identifier {
            return Err(syntax(format!("found '{lit}', expected: identifier")));
        }
        if let Some(e) = validate_key(&lit, KeyPath::Nil) {
            return Err(SelectorError::InvalidRequirement { errors: vec![e] });
        }
        let (next, _) = self.lookahead(Context::Values);
        if (next == Token::EndOfString || next == Token::Comma) && op.is_none() {
            op = Some(Op::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Op, SelectorError> {
        let (tok, lit) = self.consume(Context::KeyAndOperator);
        Ok(match tok {
            Token::In => Op::In,
            Token::Equals => Op::Equals,
            Token::DoubleEquals => Op::DoubleEquals,
            Token::GreaterThan => Op::GreaterThan,
            Token::LessThan => Op::LessThan,
            Token::NotIn => Op::NotIn,
            Token::NotEquals => Op::NotEquals,
            _ => {
                return Err(syntax(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                )));
            }
        })
    }

    fn parse_values(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (tok, lit) = self.consume(Context::Values);
        if tok != Token::OpenPar {
            return Err(syntax(format!("found '{lit}' expected: '('")));
        }
        let (tok, lit) = self.lookahead(Context::Values);
        match tok {
            Token::Identifier | Token::Comma => {
                let set = self.parse_identifiers_list()?;
                let (tok, _) = self.consume(Context::Values);
                if tok != Token::ClosedPar {
                    return Err(syntax(format!("found '{lit}', expected: ')'")));
                }
                Ok(set)
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            _ => Err(syntax(format!(
                "found '{lit}', expected: ',', ')' or identifier"
            ))),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let mut set = BTreeSet::new();
        loop {
            let (tok, lit) = self.consume(Context::Values);
            match tok {
                Token::Identifier => {
                    set.insert(lit);
                    let (tok2, lit2) = self.lookahead(Context::Values);
                    match tok2 {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(set),
                        _ => {
                            return Err(syntax(format!("found '{lit2}', expected: ',' or ')'")));
                        }
                    }
                }
                Token::Comma => {
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    let (tok2, _) = self.lookahead(Context::Values);
                    if tok2 == Token::ClosedPar {
                        set.insert(String::new());
                        return Ok(set);
                    }
                    if tok2 == Token::Comma {
                        set.insert(String::new());
                    }
                }
                _ => {
                    return Err(syntax(format!(
                        "found '{lit}', expected: ',', or identifier"
                    )));
                }
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (tok, _) = self.lookahead(Context::Values);
        if tok == Token::EndOfString || tok == Token::Comma {
            return Ok(BTreeSet::from([String::new()]));
        }
        let (tok, lit) = self.consume(Context::Values);
        if tok == Token::Identifier {
            return Ok(BTreeSet::from([lit]));
        }
        Err(syntax(format!("found '{lit}', expected: identifier")))
    }
}

// ---- field selectors ----

/// One `field=value` / `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    equal: bool,
    value: String,
}

/// A parsed field selector: the AND of its terms. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
    /// Selectable fields of the resource (besides `metadata.*`), for index terms.
    selectable: &'static [&'static str],
}

const META_NAME: &str = "metadata.name";
const META_NAMESPACE: &str = "metadata.namespace";

impl FieldSelector {
    /// Parses the `fieldSelector` query syntax for `res`. Fields other than `metadata.name`,
    /// `metadata.namespace` and `res.selectable_fields` are rejected.
    pub fn parse(s: &str, res: &ResourceInfo) -> Result<Self, SelectorError> {
        let mut parts = split_terms(s);
        parts.sort();
        let mut terms = Vec::new();
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let Some((field, op, rhs)) = split_term(part) else {
                return Err(SelectorError::FieldSyntax {
                    selector: s.to_string(),
                    term: part.to_string(),
                });
            };
            terms.push(FieldTerm {
                field: field.to_string(),
                equal: op != "!=",
                value: unescape_value(rhs)?,
            });
        }
        for t in &terms {
            let known = t.field == META_NAME
                || t.field == META_NAMESPACE
                || res.selectable_fields.contains(&t.field.as_str());
            if !known {
                return Err(SelectorError::FieldLabelNotSupported {
                    field: t.field.clone(),
                });
            }
        }
        Ok(Self {
            terms,
            selectable: res.selectable_fields,
        })
    }

    /// Whether `obj` satisfies every term. A missing field reads as `""`, as does
    /// `metadata.namespace` of a cluster-scoped object.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms
            .iter()
            .all(|t| (field_value(obj, &t.field).unwrap_or_default() == t.value) == t.equal)
    }

    /// `f:<field>=<value>` for each equality term on a selectable field (not `metadata.*`)
    /// with a non-empty value; an empty value also matches objects without the field, which
    /// have no term to intersect.
    pub fn index_terms(&self) -> Vec<String> {
        let mut terms = BTreeSet::new();
        for t in &self.terms {
            if t.equal && !t.value.is_empty() && self.selectable.contains(&t.field.as_str()) {
                terms.insert(format!("f:{}={}", t.field, t.value));
            }
        }
        terms.into_iter().collect()
    }

    /// The value required by a `metadata.name=<x>` term (kubectl sends one for a single
    /// object's watch).
    pub fn name(&self) -> Option<&str> {
        self.exact(META_NAME)
    }

    /// The value required by a `metadata.namespace=<x>` term.
    pub fn namespace(&self) -> Option<&str> {
        self.exact(META_NAMESPACE)
    }

    fn exact(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.equal && t.field == field)
            .map(|t| t.value.as_str())
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// `fields.splitTerms`: splits on commas not escaped by a backslash (which is kept).
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// `fields.splitTerm`: the first `!=`, `==` or `=` splits field from value.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if rest.starts_with(op) {
                return Some((&term[..i], op, &term[i + op.len()..]));
            }
        }
    }
    None
}

/// `fields.UnescapeValue`: `\\`, `\,` and `\=` are the only escapes; bare `,` or `=` is an
/// error.
fn unescape_value(s: &str) -> Result<String, SelectorError> {
    if !s.contains(['\\', ',', '=']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(SelectorError::InvalidEscape {
                        sequence: format!("\\{c}"),
                    });
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return Err(SelectorError::UnescapedRune { rune: c }),
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::InvalidEscape {
            sequence: "\\".to_string(),
        });
    }
    Ok(out)
}

/// The value of a dotted field path as a field selector sees it: strings as is, numbers and
/// booleans in their JSON spelling; `None` when absent, null or not a scalar.
fn field_value(obj: &Value, path: &str) -> Option<String> {
    let mut cur = obj;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Every index term of a stored object: `l:<k>=<v>` and `lk:<k>` per label, and
/// `f:<field>=<value>` per selectable field with a scalar value. Sorted and deduplicated.
pub fn object_terms(res: &ResourceInfo, obj: &Value) -> Vec<String> {
    let mut terms = BTreeSet::new();
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(v) = v.as_str() {
                terms.insert(format!("l:{k}={v}"));
                terms.insert(format!("lk:{k}"));
            }
        }
    }
    for field in res.selectable_fields {
        if let Some(v) = field_value(obj, field) {
            terms.insert(format!("f:{field}={v}"));
        }
    }
    terms.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::resources::{ACTORS, ATESPACES, WORKERS};
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> String {
        LabelSelector::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_operator() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5", "empty": ""}));
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "app in (web,db)",
            "app notin (db)",
            "missing notin (db)",
            "app",
            "!missing",
            "n>4",
            "n<6",
            "empty=",
            "empty in ()",
            " app = web , tier in ( front ) ",
            "app,tier=front,!x",
        ];
        for s in yes {
            assert!(sel(s).matches(Some(&l)), "{s:?} should match");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "app notin (web,db)",
            "missing",
            "!app",
            "n>5",
            "n<5",
            "app>1",
            "missing=",
            "app=web,tier=back",
        ];
        for s in no {
            assert!(!sel(s).matches(Some(&l)), "{s:?} should not match");
        }
        assert!(sel("").matches(None));
        assert!(sel("!a").matches(None));
        assert!(!sel("a").matches(None));
        assert!(sel("").is_empty());
        assert!(!sel("a").is_empty());
    }

    #[test]
    fn keywords_are_values_in_value_position() {
        let l = labels(json!({"in": "notin"}));
        assert!(sel("in=notin").matches(Some(&l)));
        assert!(sel("in in (notin)").matches(Some(&l)));
    }

    #[test]
    fn errors_read_like_apimachinery() {
        assert_eq!(
            err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            err("a in (x y)"),
            "unable to parse requirement: found 'y', expected: ',' or ')'"
        );
        assert_eq!(
            err("a in x"),
            "unable to parse requirement: found 'x' expected: '('"
        );
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(err("a,"), "found '', expected: identifier after ','");
        assert_eq!(
            err("=a"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("a=!b"),
            "unable to parse requirement: found '!', expected: identifier"
        );
        assert_eq!(
            err("a>x"),
            "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
        let e = err("a/b/c=d");
        assert!(
            e.starts_with("unable to parse requirement: <nil>: Invalid value: \"a/b/c\": "),
            "{e}"
        );
        let e = err("-a=b");
        assert!(
            e.starts_with("unable to parse requirement: <nil>: Invalid value: \"-a\": name part must consist of"),
            "{e}"
        );
        let e = err("a=b/c");
        assert!(
            e.starts_with("unable to parse requirement: values[0][a]: Invalid value: \"b/c\": a valid label must be"),
            "{e}"
        );
        assert!(matches!(
            LabelSelector::parse("a in (x y)"),
            Err(SelectorError::Requirement { .. })
        ));
    }

    #[test]
    fn canonical_string() {
        assert_eq!(
            sel("z in (b,a), !y, a>1, b").to_string(),
            "a>1,b,!y,z in (a,b)"
        );
    }

    #[test]
    fn from_label_selector_and_its_errors() {
        let s: metav1::LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "gone", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        let s = LabelSelector::from_label_selector(&s).unwrap();
        assert!(s.matches(Some(&labels(json!({"app": "web", "tier": "back"})))));
        assert!(!s.matches(Some(&labels(
            json!({"app": "web", "tier": "back", "gone": "x"})
        ))));
        assert_eq!(s.index_terms(), ["l:app=web", "lk:tier"]);
        let empty = LabelSelector::from_label_selector(&Default::default()).unwrap();
        assert!(empty.is_empty() && empty.matches(None));

        let bad: metav1::LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]}))
                .unwrap();
        assert_eq!(
            LabelSelector::from_label_selector(&bad)
                .unwrap_err()
                .to_string(),
            "\"Foo\" is not a valid label selector operator"
        );
        let bad: metav1::LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
        )
        .unwrap();
        assert_eq!(
            LabelSelector::from_label_selector(&bad)
                .unwrap_err()
                .to_string(),
            "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
        );
        let bad: metav1::LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "-a", "operator": "Exists", "values": ["x"]}]}),
        )
        .unwrap();
        let e = LabelSelector::from_label_selector(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("[key: Invalid value: \"-a\": "), "{e}");
        assert!(
            e.ends_with(", values: Invalid value: []string{\"x\"}: values set must be empty for exists and does not exist]"),
            "{e}"
        );
    }

    #[test]
    fn label_index_terms() {
        assert_eq!(
            sel("a=1,b==2,c in (3),d in (4,5),e,!f,g!=6,h notin (7),i>1").index_terms(),
            ["l:a=1", "l:b=2", "l:c=3", "lk:d", "lk:e", "lk:i"]
        );
    }

    fn actor(phase: Option<&str>) -> Value {
        let mut a = json!({
            "metadata": {"name": "a1", "namespace": "team-a", "labels": {"app": "web", "x": ""}},
            "spec": {"template": {"name": "counter"}, "activation": "OnDemand"},
        });
        if let Some(p) = phase {
            a["status"] = json!({"phase": p, "worker": {"name": "w1"}});
        }
        a
    }

    fn fsel(s: &str) -> FieldSelector {
        FieldSelector::parse(s, &ACTORS).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn field_selectors_match() {
        let a = actor(Some("Running"));
        for s in [
            "",
            "metadata.name=a1",
            "metadata.name==a1",
            "metadata.namespace=team-a",
            "status.phase=Running,spec.template.name=counter",
            "status.phase!=Suspended",
            "status.worker.name=w1",
            "spec.activation=OnDemand",
        ] {
            assert!(fsel(s).matches(&a), "{s:?}");
        }
        for s in ["metadata.name=a2", "status.phase!=Running", "status.phase="] {
            assert!(!fsel(s).matches(&a), "{s:?}");
        }
        let suspended = actor(None);
        assert!(fsel("status.phase=").matches(&suspended));
        assert!(fsel("status.phase!=Running").matches(&suspended));

        let ates = json!({"metadata": {"name": "team-a"}, "status": {"phase": "Active"}});
        let s =
            FieldSelector::parse("metadata.namespace=,status.phase=Active", &ATESPACES).unwrap();
        assert!(s.matches(&ates));
        let s = FieldSelector::parse("metadata.namespace=team-a", &ATESPACES).unwrap();
        assert!(!s.matches(&ates));
    }

    #[test]
    fn field_selector_name_namespace_and_terms() {
        let s = fsel(
            "metadata.name=a1,metadata.namespace=team-a,status.phase=Running,spec.activation!=Always,status.worker.name=",
        );
        assert_eq!(s.name(), Some("a1"));
        assert_eq!(s.namespace(), Some("team-a"));
        assert_eq!(s.index_terms(), ["f:status.phase=Running"]);
        assert!(fsel("metadata.name!=a1").name().is_none());
        assert!(fsel("").is_empty());
    }

    #[test]
    fn field_selector_escapes() {
        let obj = json!({"metadata": {"name": "a,b=c\\d"}});
        let s = fsel(r"metadata.name=a\,b\=c\\d");
        assert_eq!(s.name(), Some("a,b=c\\d"));
        assert!(s.matches(&obj));
        let e = |s: &str| FieldSelector::parse(s, &ACTORS).unwrap_err().to_string();
        assert_eq!(
            e(r"metadata.name=a\x"),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            e(r"metadata.name=a\"),
            r"invalid field selector: invalid escape sequence: \"
        );
        assert_eq!(
            e("metadata.name=a=b"),
            "invalid field selector: unescapedRune character in value: 61"
        );
        assert_eq!(
            e("metadata.name"),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
    }

    #[test]
    fn unsupported_field_error_is_exactly_kubernetes() {
        let e = FieldSelector::parse("foo=bar", &ACTORS).unwrap_err();
        assert_eq!(e.to_string(), "field label not supported: foo");
        assert_eq!(
            e,
            SelectorError::FieldLabelNotSupported {
                field: "foo".into()
            }
        );
        // Terms are sorted before the fields are checked, as in Go.
        let e = FieldSelector::parse("zz=1,aa=2", &ACTORS).unwrap_err();
        assert_eq!(e.to_string(), "field label not supported: aa");
        // Syntax errors win over unsupported fields.
        let e = FieldSelector::parse("aa=2,zz", &ACTORS).unwrap_err();
        assert!(matches!(e, SelectorError::FieldSyntax { .. }));
        // Selectable fields are per resource.
        assert!(FieldSelector::parse("spec.pool=p", &ACTORS).is_err());
        assert!(FieldSelector::parse("spec.pool=p", &WORKERS).is_ok());
    }

    #[test]
    fn object_terms_cover_selector_terms() {
        let a = actor(Some("Running"));
        let terms = object_terms(&ACTORS, &a);
        assert_eq!(
            terms,
            [
                "f:spec.activation=OnDemand",
                "f:spec.template.name=counter",
                "f:status.phase=Running",
                "f:status.worker.name=w1",
                "l:app=web",
                "l:x=",
                "lk:app",
                "lk:x",
            ]
        );
        for s in ["app=web", "x=", "app in (web)", "app in (web,db)", "x"] {
            for t in sel(s).index_terms() {
                assert!(terms.contains(&t), "{s}: {t}");
            }
        }
        for t in fsel("status.phase=Running,spec.template.name=counter").index_terms() {
            assert!(terms.contains(&t), "{t}");
        }
    }
}
