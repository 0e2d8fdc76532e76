//! Rule matching and rule covering, ported from Kubernetes: `RuleAllows`
//! (`plugin/pkg/auth/authorizer/rbac`), the matchers of `pkg/apis/rbac/v1/evaluation_helpers.go`
//! (`VerbMatches`, `APIGroupMatches`, `ResourceMatches`, `ResourceNameMatches`,
//! `NonResourceURLMatches`, `CompactString`), `Covers` (`component-helpers/auth/rbac/validation`)
//! and `CompactRules` (`pkg/registry/rbac/validation`).
//!
//! Like Kubernetes 1.25, a resource rule matches `*`, the exact `resource` or
//! `resource/subresource`, and `*/subresource`; `resource/*` is not a wildcard (it only matches
//! a request for the literal subresource `*`).

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::authz::Attributes;

const ALL: &str = "*";

fn list(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or_default()
}

/// `VerbMatches`.
pub fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == ALL || v == verb)
}

/// `APIGroupMatches`.
pub fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    list(&rule.api_groups)
        .iter()
        .any(|g| g == ALL || g == group)
}

/// `ResourceMatches`: `combined` is `resource` or `resource/subresource`.
pub fn resource_matches(rule: &PolicyRule, combined: &str, subresource: &str) -> bool {
    list(&rule.resources).iter().any(|r| {
        r == ALL
            || r == combined
            || (!subresource.is_empty()
                && r.len() == subresource.len() + 2
                && r.starts_with("*/")
                && r.ends_with(subresource))
    })
}

/// `ResourceNameMatches`: no names in the rule matches every name.
pub fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    let names = list(&rule.resource_names);
    names.is_empty() || names.iter().any(|n| n == name)
}

/// `NonResourceURLMatches`: `*`, the exact path, or a `prefix*`.
pub fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    list(&rule.non_resource_urls).iter().any(|u| {
        u == ALL || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*')))
    })
}

/// `RuleAllows`: whether `rule` allows the request.
pub fn rule_allows(a: &Attributes, rule: &PolicyRule) -> bool {
    if a.resource_request {
        let combined = if a.subresource.is_empty() {
            std::borrow::Cow::Borrowed(a.resource.as_str())
        } else {
            std::borrow::Cow::Owned(format!("{}/{}", a.resource, a.subresource))
        };
        return verb_matches(rule, &a.verb)
            && api_group_matches(rule, &a.group)
            && resource_matches(rule, &combined, &a.subresource)
            && resource_name_matches(rule, &a.name);
    }
    verb_matches(rule, &a.verb) && non_resource_url_matches(rule, &a.path)
}

fn one(s: &str) -> Option<Vec<String>> {
    Some(vec![s.to_string()])
}

/// `breakdownRule`: one rule per (group, resource, verb[, name]) and per (URL, verb).
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for g in list(&rule.api_groups) {
        for r in list(&rule.resources) {
            for v in &rule.verbs {
                let names = list(&rule.resource_names);
                if names.is_empty() {
                    out.push(PolicyRule {
                        api_groups: one(g),
                        resources: one(r),
                        verbs: vec![v.clone()],
                        ..Default::default()
                    });
                } else {
                    for n in names {
                        out.push(PolicyRule {
                            api_groups: one(g),
                            resources: one(r),
                            verbs: vec![v.clone()],
                            resource_names: one(n),
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    for u in list(&rule.non_resource_urls) {
        for v in &rule.verbs {
            out.push(PolicyRule {
                non_resource_urls: one(u),
                verbs: vec![v.clone()],
                ..Default::default()
            });
        }
    }
    out
}

fn has(set: &[String], e: &str) -> bool {
    set.iter().any(|s| s == e)
}

fn has_all(set: &[String], contains: &[String]) -> bool {
    contains.iter().all(|c| has(set, c))
}

fn non_resource_url_covers(owner: &str, sub: &str) -> bool {
    owner == sub || (owner.ends_with('*') && sub.starts_with(owner.trim_end_matches('*')))
}

/// `ruleCovers`: whether `owner` covers `sub` (at most one verb, resource and name).
fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, ALL) || has_all(&owner.verbs, &sub.verbs);
    let groups = has(list(&owner.api_groups), ALL)
        || has_all(list(&owner.api_groups), list(&sub.api_groups));
    let resources =
        has(list(&owner.resources), ALL) || has_all(list(&owner.resources), list(&sub.resources));
    let urls = list(&sub.non_resource_urls).iter().all(|p| {
        list(&owner.non_resource_urls)
            .iter()
            .any(|o| non_resource_url_covers(o, p))
    });
    let owner_names = list(&owner.resource_names);
    let names = if list(&sub.resource_names).is_empty() {
        owner_names.is_empty()
    } else {
        owner_names.is_empty() || has_all(owner_names, list(&sub.resource_names))
    };
    verbs && groups && resources && names && urls
}

/// `Covers`: whether `owner` rules cover every `servant` rule; the uncovered pieces.
pub fn covers(owner: &[PolicyRule], servant: &[PolicyRule]) -> (bool, Vec<PolicyRule>) {
    let uncovered: Vec<PolicyRule> = servant
        .iter()
        .flat_map(breakdown)
        .filter(|sub| !owner.iter().any(|o| rule_covers(o, sub)))
        .collect();
    (uncovered.is_empty(), uncovered)
}

/// `CompactRules`: rules of one group and one resource (and nothing else) merged by verbs.
pub fn compact(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    let mut simple: BTreeMap<(String, String), PolicyRule> = BTreeMap::new();
    for r in rules {
        let groups = list(&r.api_groups);
        let resources = list(&r.resources);
        let is_simple = list(&r.resource_names).is_empty()
            && list(&r.non_resource_urls).is_empty()
            && groups.len() == 1
            && resources.len() == 1;
        if is_simple {
            let key = (groups[0].clone(), resources[0].clone());
            match simple.get_mut(&key) {
                Some(existing) => existing.verbs.extend(r.verbs.iter().cloned()),
                None => {
                    simple.insert(key, r.clone());
                }
            }
        } else {
            out.push(r.clone());
        }
    }
    out.extend(simple.into_values());
    out
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quoted(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", q.join(" "))
}

/// `CompactString`: `{APIGroups:["x"], Resources:["y"], Verbs:["get"]}`.
pub fn compact_string(r: &PolicyRule) -> String {
    let mut parts = Vec::new();
    for (name, v) in [
        ("APIGroups", list(&r.api_groups)),
        ("Resources", list(&r.resources)),
        ("NonResourceURLs", list(&r.non_resource_urls)),
        ("ResourceNames", list(&r.resource_names)),
        ("Verbs", r.verbs.as_slice()),
    ] {
        if !v.is_empty() {
            parts.push(format!("{name}:{}", go_quoted(v)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserInfo;

    fn rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
        let v = |s: &[&str]| -> Option<Vec<String>> {
            (!s.is_empty()).then(|| s.iter().map(|x| x.to_string()).collect())
        };
        PolicyRule {
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            ..Default::default()
        }
    }

    fn url_rule(urls: &[&str], verbs: &[&str]) -> PolicyRule {
        PolicyRule {
            non_resource_urls: Some(urls.iter().map(|x| x.to_string()).collect()),
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            ..Default::default()
        }
    }

    fn req(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        let u = UserInfo {
            name: "u".into(),
            groups: vec![],
            extra: Default::default(),
        };
        Attributes::resource(
            &u,
            verb,
            group,
            "v1",
            resource,
            (!sub.is_empty()).then_some(sub),
            Some("ns"),
            (!name.is_empty()).then_some(name),
        )
    }

    /// The cases of Kubernetes' `TestRuleMatches` (rbac_test.go), and the subresource forms.
    #[test]
    fn rules_match_as_in_kubernetes() {
        let cases: &[(&str, PolicyRule, Attributes, bool)] = &[
            (
                "star verb, exact match other",
                rule(&["group1"], &["resource1"], &[], &["*"]),
                req("get", "group1", "resource1", "", ""),
                true,
            ),
            (
                "star verb, exact match other, wrong group",
                rule(&["group1"], &["resource1"], &[], &["*"]),
                req("get", "group2", "resource1", "", ""),
                false,
            ),
            (
                "star group, exact match other",
                rule(&["*"], &["resource1"], &[], &["get"]),
                req("get", "group1", "resource1", "", ""),
                true,
            ),
            (
                "star resource, exact match other",
                rule(&["group1"], &["*"], &[], &["get"]),
                req("get", "group1", "resource1", "", ""),
                true,
            ),
            (
                "tuple match",
                rule(&["group1"], &["resource1"], &[], &["get"]),
                req("get", "group1", "resource1", "", ""),
                true,
            ),
            (
                "tuple miss verb",
                rule(&["group1"], &["resource1"], &[], &["get"]),
                req("list", "group1", "resource1", "", ""),
                false,
            ),
            (
                "tuple miss group",
                rule(&["group1"], &["resource1"], &[], &["get"]),
                req("get", "group2", "resource1", "", ""),
                false,
            ),
            (
                "tuple miss resource",
                rule(&["group1"], &["resource1"], &[], &["get"]),
                req("get", "group1", "resource2", "", ""),
                false,
            ),
            (
                "resource name match",
                rule(&["group1"], &["resource1"], &["foo"], &["get"]),
                req("get", "group1", "resource1", "", "foo"),
                true,
            ),
            (
                "resource name miss",
                rule(&["group1"], &["resource1"], &["foo"], &["get"]),
                req("get", "group1", "resource1", "", "bar"),
                false,
            ),
            (
                "resource names on a list (no name)",
                rule(&["group1"], &["resource1"], &["foo"], &["list"]),
                req("list", "group1", "resource1", "", ""),
                false,
            ),
            (
                "subresource exact",
                rule(&["g"], &["actors/resume"], &[], &["create"]),
                req("create", "g", "actors", "resume", "a"),
                true,
            ),
            (
                "resource does not cover its subresources",
                rule(&["g"], &["actors"], &[], &["create"]),
                req("create", "g", "actors", "resume", "a"),
                false,
            ),
            (
                "*/subresource",
                rule(&["g"], &["*/status"], &[], &["get"]),
                req("get", "g", "actors", "status", "a"),
                true,
            ),
            (
                "*/subresource, other subresource",
                rule(&["g"], &["*/status"], &[], &["get"]),
                req("get", "g", "actors", "resume", "a"),
                false,
            ),
            (
                "*/subresource does not match the resource",
                rule(&["g"], &["*/status"], &[], &["get"]),
                req("get", "g", "actors", "", "a"),
                false,
            ),
            (
                "resource/* is not a wildcard (as Kubernetes 1.25)",
                rule(&["g"], &["actors/*"], &[], &["get"]),
                req("get", "g", "actors", "status", "a"),
                false,
            ),
            (
                "* covers subresources",
                rule(&["g"], &["*"], &[], &["create"]),
                req("create", "g", "actors", "reset", "a"),
                true,
            ),
            (
                "core group is the empty string",
                rule(&[""], &["namespaces"], &[], &["get"]),
                req("get", "", "namespaces", "", "team-a"),
                true,
            ),
        ];
        for (name, r, a, want) in cases {
            assert_eq!(rule_allows(a, r), *want, "{name}");
        }
    }

    #[test]
    fn non_resource_urls_match_as_in_kubernetes() {
        let u = UserInfo {
            name: "u".into(),
            groups: vec![],
            extra: Default::default(),
        };
        let get = |p: &str| Attributes::non_resource(&u, "get", p);
        let cases: &[(PolicyRule, Attributes, bool)] = &[
            (url_rule(&["*"], &["get"]), get("/api"), true),
            (url_rule(&["/api"], &["get"]), get("/api"), true),
            (url_rule(&["/api"], &["get"]), get("/api/v1"), false),
            (url_rule(&["/api/*"], &["get"]), get("/api/v1"), true),
            (url_rule(&["/api/*"], &["get"]), get("/api"), false),
            (url_rule(&["/api*"], &["get"]), get("/apis"), true),
            (url_rule(&["/api"], &["post"]), get("/api"), false),
            (url_rule(&["/api"], &["*"]), get("/api"), true),
            // A resource rule never matches a path.
            (rule(&["*"], &["*"], &[], &["*"]), get("/api"), false),
        ];
        for (r, a, want) in cases {
            assert_eq!(rule_allows(a, r), *want, "{r:?} {}", a.path);
        }
    }

    /// Cases of Kubernetes' `TestCoversExactMatch` … `TestNonResourceURLCovers`
    /// (policy_comparator_test.go).
    #[test]
    fn covering_is_as_in_kubernetes() {
        let c = |o: Vec<PolicyRule>, s: Vec<PolicyRule>| covers(&o, &s).0;
        assert!(c(
            vec![rule(&["v1"], &["builds"], &[], &["get"])],
            vec![rule(&["v1"], &["builds"], &[], &["get"])]
        ));
        assert!(c(
            vec![rule(&["v1"], &["*"], &[], &["get"])],
            vec![rule(&["v1"], &["builds", "pods"], &[], &["get"])]
        ));
        assert!(c(
            vec![rule(&["*"], &["*"], &[], &["*"])],
            vec![rule(&["a", "b"], &["x"], &["n"], &["get", "list"])]
        ));
        assert!(!c(
            vec![rule(&["v1"], &["builds"], &[], &["get"])],
            vec![rule(&["v1"], &["builds"], &[], &["get", "list"])]
        ));
        // An owner with resource names does not cover all names.
        assert!(!c(
            vec![rule(&["v1"], &["pods"], &["foo"], &["get"])],
            vec![rule(&["v1"], &["pods"], &[], &["get"])]
        ));
        assert!(c(
            vec![rule(&["v1"], &["pods"], &["foo", "bar"], &["get"])],
            vec![rule(&["v1"], &["pods"], &["foo"], &["get"])]
        ));
        assert!(c(
            vec![url_rule(&["/api/*"], &["get"])],
            vec![url_rule(&["/api/v1", "/api/v2"], &["get"])]
        ));
        assert!(!c(
            vec![url_rule(&["/api/v1"], &["get"])],
            vec![url_rule(&["/api/*"], &["get"])]
        ));
        assert!(c(
            vec![url_rule(&["*"], &["*"])],
            vec![url_rule(&["/foo"], &["post"])]
        ));
        // The uncovered pieces, compacted and described as Kubernetes' escalation message does.
        let (ok, missing) = covers(
            &[rule(&["g"], &["actors"], &[], &["get"])],
            &[
                rule(&["g"], &["actors"], &[], &["get", "list", "delete"]),
                url_rule(&["/x"], &["get"]),
            ],
        );
        assert!(!ok);
        let mut d: Vec<String> = compact(&missing).iter().map(compact_string).collect();
        d.sort();
        assert_eq!(
            d,
            [
                "{APIGroups:[\"g\"], Resources:[\"actors\"], Verbs:[\"list\" \"delete\"]}",
                "{NonResourceURLs:[\"/x\"], Verbs:[\"get\"]}",
            ]
        );
    }
}
