//! Static bearer tokens: kube-apiserver's `--token-auth-file`.
//!
//! The file is CSV, one token a record, read once at start (as kube reads it):
//!
//! ```text
//! token,user,uid,"group1,group2"
//! ```
//!
//! Parsed with kube's rules (`k8s.io/apiserver/.../token/tokenfile.NewCSV`, Go's
//! `encoding/csv` with a variable number of fields): at least three columns (token, user
//! name, user uid), an optional fourth with the groups separated by commas (split as Go's
//! `strings.Split`, so an empty fourth column is one empty group name), further columns
//! ignored; fields may be quoted (`"a,b"`, `""` for a quote inside quotes, even across
//! lines), a quote inside an unquoted field is an error; blank lines are skipped; a record
//! with an empty token is skipped (kube warns); a token that appears twice names the later
//! record's user (kube warns). A malformed line is an error naming the file and the line.
//!
//! A token not in the file is not an answer: the next authenticator (the cluster's
//! `TokenReview`, in cluster mode) is asked. Users get `system:authenticated` added, as kube's
//! authenticated-group adder does. Tokens are never logged.

use std::collections::HashMap;
use std::path::Path;

use super::UserInfo;

/// A user the file names for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    pub user: UserInfo,
    pub uid: String,
}

/// Why the token file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenFileError {
    #[error("reading token file {path:?}: {reason}")]
    Read { path: String, reason: String },
    /// Go's `csv.ParseError` wording.
    #[error("token file {path:?}: {detail}")]
    Parse { path: String, detail: String },
    #[error(
        "token file {path:?} must have at least 3 columns (token, user name, user uid), found {found} (line {line})"
    )]
    Columns {
        path: String,
        found: usize,
        line: usize,
    },
}

/// The tokens of a `--token-auth-file`.
#[derive(Debug, Default, Clone)]
pub struct StaticTokens {
    tokens: HashMap<String, TokenUser>,
}

impl StaticTokens {
    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self, TokenFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError::Read {
            path: name.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&name, &text)
    }

    /// Parses the file's text (`path` names it in errors and warnings).
    pub fn parse(path: &str, text: &str) -> Result<Self, TokenFileError> {
        let mut tokens = HashMap::new();
        let mut record_num = 0usize;
        for rec in records(text) {
            let (line, fields) = rec.map_err(|detail| TokenFileError::Parse {
                path: path.into(),
                detail,
            })?;
            if fields.len() < 3 {
                return Err(TokenFileError::Columns {
                    path: path.into(),
                    found: fields.len(),
                    line,
                });
            }
            record_num += 1;
            if fields[0].is_empty() {
                tracing::warn!(path, record = record_num, line, "empty token in token file");
                continue;
            }
            let mut groups: Vec<String> = match fields.get(3) {
                Some(g) => g.split(',').map(str::to_string).collect(),
                None => Vec::new(),
            };
            if !groups
                .iter()
                .any(|g| g == "system:authenticated" || g == "system:unauthenticated")
            {
                groups.push("system:authenticated".into());
            }
            let user = TokenUser {
                user: UserInfo {
                    name: fields[1].clone(),
                    groups,
                    extra: Default::default(),
                },
                uid: fields[2].clone(),
            };
            if tokens.insert(fields[0].clone(), user).is_some() {
                tracing::warn!(
                    path,
                    record = record_num,
                    line,
                    "duplicate token in token file"
                );
            }
        }
        Ok(Self { tokens })
    }

    /// The user of `token`, if the file has it.
    pub fn get(&self, token: &str) -> Option<&TokenUser> {
        self.tokens.get(token)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Go's `encoding/csv` reader (comma `,`, no comments, no lazy quotes, leading spaces kept,
/// variable field counts): each record with the line it starts on, or the error Go's
/// `csv.ParseError` prints.
fn records(text: &str) -> impl Iterator<Item = Result<(usize, Vec<String>), String>> + '_ {
    // Lines with their 1-based numbers, `\r\n` read as `\n` (as Go's reader does).
    let lines: Vec<&str> = text
        .split_inclusive('\n')
        .map(|l| {
            let l = l.strip_suffix('\n').unwrap_or(l);
            l.strip_suffix('\r').unwrap_or(l)
        })
        .collect();
    let mut i = 0usize;
    std::iter::from_fn(move || {
        // Skip blank lines.
        while i < lines.len() && lines[i].is_empty() {
            i += 1;
        }
        if i >= lines.len() {
            return None;
        }
        let start = i + 1;
        let mut fields = Vec::new();
        let mut line: Vec<char> = lines[i].chars().collect();
        let mut pos = 0usize;
        loop {
            if line.get(pos) != Some(&'"') {
                // Unquoted field: up to the next comma or the end of the line.
                let end = line[pos..]
                    .iter()
                    .position(|&c| c == ',')
                    .map_or(line.len(), |p| pos + p);
                let field: String = line[pos..end].iter().collect();
                if let Some(q) = field.find('"') {
                    let col = pos + field[..q].chars().count() + 1;
                    i += 1;
                    return Some(Err(parse_error(
                        start,
                        i,
                        col,
                        "bare \" in non-quoted field",
                    )));
                }
                fields.push(field);
                if end == line.len() {
                    i += 1;
                    return Some(Ok((start, fields)));
                }
                pos = end + 1;
                continue;
            }
            // Quoted field: may continue over lines.
            pos += 1;
            let mut field = String::new();
            loop {
                match line.get(pos) {
                    Some('"') if line.get(pos + 1) == Some(&'"') => {
                        field.push('"');
                        pos += 2;
                    }
                    Some('"') => {
                        pos += 1;
                        match line.get(pos) {
                            Some(',') => {
                                pos += 1;
                                fields.push(field);
                                break;
                            }
                            None => {
                                fields.push(field);
                                i += 1;
                                return Some(Ok((start, fields)));
                            }
                            Some(_) => {
                                i += 1;
                                return Some(Err(parse_error(
                                    start,
                                    i,
                                    pos + 1,
                                    "extraneous or missing \" in quoted-field",
                                )));
                            }
                        }
                    }
                    Some(&c) => {
                        field.push(c);
                        pos += 1;
                    }
                    None => {
                        // The quoted field goes on on the next line.
                        i += 1;
                        if i >= lines.len() {
                            return Some(Err(parse_error(
                                start,
                                i,
                                line.len() + 1,
                                "extraneous or missing \" in quoted-field",
                            )));
                        }
                        field.push('\n');
                        line = lines[i].chars().collect();
                        pos = 0;
                    }
                }
            }
        }
    })
}

/// Go's `csv.ParseError.Error()`.
fn parse_error(start: usize, line: usize, column: usize, what: &str) -> String {
    if start == line {
        format!("parse error on line {line}, column {column}: {what}")
    } else {
        format!("record on line {start}; parse error on line {line}, column {column}: {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, uid: &str, groups: &[&str]) -> TokenUser {
        TokenUser {
            user: UserInfo {
                name: name.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                extra: Default::default(),
            },
            uid: uid.into(),
        }
    }

    #[test]
    fn good_lines_parse_as_kube_parses_them() {
        let text = "alice-token,alice,1,\"team-a,devs\"\r\n\
                    \n\
                    bob-token,bob,2\n\
                    ,nobody,3\n\
                    carol-token,carol,4,ops,ignored,columns\n\
                    \"quoted,token\",\"dave \"\"d\"\"\",5,\"multi\nline\"\n\
                    empty-groups,erin,6,\n\
                    alice-token,alice2,7\n\
                    no-newline,frank,8";
        let t = StaticTokens::parse("tokens.csv", text).unwrap();
        // The later record of a duplicate token wins.
        assert_eq!(
            t.get("alice-token"),
            Some(&user("alice2", "7", &["system:authenticated"]))
        );
        assert_eq!(
            t.get("bob-token"),
            Some(&user("bob", "2", &["system:authenticated"]))
        );
        assert_eq!(
            t.get("carol-token"),
            Some(&user("carol", "4", &["ops", "system:authenticated"]))
        );
        assert_eq!(
            t.get("quoted,token"),
            Some(&user(
                "dave \"d\"",
                "5",
                &["multi\nline", "system:authenticated"]
            ))
        );
        // Go's strings.Split("", ",") is [""]: kube gives this user an empty group name.
        assert_eq!(
            t.get("empty-groups"),
            Some(&user("erin", "6", &["", "system:authenticated"]))
        );
        assert_eq!(
            t.get("no-newline"),
            Some(&user("frank", "8", &["system:authenticated"]))
        );
        // The empty token is skipped, not a token.
        assert_eq!(t.get(""), None);
        assert_eq!(t.len(), 6);
        let t = StaticTokens::parse("x", "t,u,1,\"a,b\"").unwrap();
        assert_eq!(
            t.get("t").unwrap().user.groups,
            ["a", "b", "system:authenticated"]
        );
        // Already authenticated: not added twice.
        let t = StaticTokens::parse("x", "t,u,1,system:authenticated").unwrap();
        assert_eq!(t.get("t").unwrap().user.groups, ["system:authenticated"]);
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        let err = |text: &str| StaticTokens::parse("/etc/tokens.csv", text).unwrap_err();
        assert_eq!(
            err("a,b,c\n\ntoken,user\n").to_string(),
            "token file \"/etc/tokens.csv\" must have at least 3 columns (token, user name, user uid), found 2 (line 3)"
        );
        assert_eq!(
            err("a,b,c\nto\"ken,user,1\n").to_string(),
            "token file \"/etc/tokens.csv\": parse error on line 2, column 3: bare \" in non-quoted field"
        );
        assert_eq!(
            err("\"tok\"en,user,1\n").to_string(),
            "token file \"/etc/tokens.csv\": parse error on line 1, column 6: extraneous or missing \" in quoted-field"
        );
        assert_eq!(
            err("a,b,c\n\"unterminated,user,1\nnext").to_string(),
            "token file \"/etc/tokens.csv\": record on line 2; parse error on line 3, column 5: extraneous or missing \" in quoted-field"
        );
        // A line of spaces is not blank: one field.
        assert!(matches!(
            err("  \n"),
            TokenFileError::Columns {
                found: 1,
                line: 1,
                ..
            }
        ));
        assert!(matches!(
            StaticTokens::read(Path::new("/nonexistent/tokens.csv")),
            Err(TokenFileError::Read { .. })
        ));
        assert!(StaticTokens::parse("x", "").unwrap().is_empty());
    }
}
