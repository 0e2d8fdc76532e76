//! Tenancy rules the apiserver applies on top of plain authorization.
//!
//! **Atespaces are namespaces.** As kube-apiserver's `RequestInfoFactory` does for
//! `namespaces`, a request about one atespace by name (`atespaces/<name>`, its `status`,
//! `/api/v1/namespaces/<name>`) is authorized in the namespace of that name
//! ([`authz_namespace`]), so a RoleBinding in `team-a` that grants `get` on atespaces lets
//! its subjects read atespace `team-a`.
//!
//! **Filtered atespace lists and watches** (as OpenShift's `projects`): a user who may not
//! `list` (or `watch`) atespaces at the cluster scope is not refused; the list holds exactly
//! the atespaces they may `get` (each authorized in its own namespace), possibly none
//! ([`AtespaceFilter`]). The same for the core `namespaces` the standalone server answers
//! from atespaces. A watch is filtered per event with the authorizer's answer at that
//! moment; what this watcher was shown is remembered, so an atespace that becomes visible
//! arrives as `ADDED` and one that stops being visible leaves as `DELETED` (a watch that
//! follows a list starts with what is visible when it starts). A permission
//! change alone produces no event: it shows at the atespace's next event, or when the
//! client lists again (every watch ends within its timeout).
//!
//! **Templates shared across atespaces** ([`check_template_use`]): an actor may use an
//! ActorTemplate of another atespace only when the template's `spec.sharing` names the
//! actor's atespace or selects it by its labels.

use std::collections::HashSet;

use serde_json::Value;

use crds::resources::{ACTOR_TEMPLATES, ATESPACES, Kind, ResourceInfo};
use crds::validation::FieldError;

use crate::auth::UserInfo;
use crate::authz::{self, Attributes};
use crate::registry::Registry;
use crate::status::ApiError;

/// The namespace a request is authorized in: the path's, or for one atespace by name, that
/// atespace itself.
pub fn authz_namespace<'a>(
    res: &ResourceInfo,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
) -> Option<&'a str> {
    if res.kind_id == Kind::Atespace && name.is_some() {
        name
    } else {
        namespace
    }
}

/// Decides which atespaces one user sees in a filtered list or watch: those they may `get`
/// (as `atespaces`, or as core `namespaces` for the standalone namespace view).
#[derive(Clone)]
pub struct AtespaceFilter {
    chain: authz::Chain,
    user: UserInfo,
    group: &'static str,
    version: &'static str,
    resource: &'static str,
}

impl AtespaceFilter {
    /// For `substrate.ate.dev` `atespaces`.
    pub fn atespaces(chain: &authz::Chain, user: &UserInfo) -> Self {
        Self {
            chain: chain.clone(),
            user: user.clone(),
            group: ATESPACES.group,
            version: ATESPACES.version,
            resource: ATESPACES.plural,
        }
    }

    /// For core `v1` `namespaces` (atespaces seen as namespaces).
    pub fn namespaces(chain: &authz::Chain, user: &UserInfo) -> Self {
        Self {
            chain: chain.clone(),
            user: user.clone(),
            group: "",
            version: "v1",
            resource: "namespaces",
        }
    }

    /// Whether the user may `get` this atespace (an authorizer failure hides it).
    pub async fn visible(&self, atespace: &Value) -> bool {
        let name = name_of(atespace);
        let attrs = Attributes::resource(
            &self.user,
            "get",
            self.group,
            self.version,
            self.resource,
            None,
            Some(name),
            Some(name),
        );
        match self.chain.authorize(&attrs).await {
            Ok(a) => a.allowed(),
            Err(e) => {
                tracing::warn!(user = %self.user.name, atespace = name, error = %e, "authorization failed; atespace hidden from the list");
                false
            }
        }
    }

    /// The atespaces of `items` the user may see, in order.
    pub async fn retain(&self, items: Vec<Value>) -> Vec<Value> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if self.visible(&item).await {
                out.push(item);
            }
        }
        out
    }
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// What one filtered watcher has been shown (see the module docs).
#[derive(Default)]
pub struct Shown(HashSet<String>);

impl Shown {
    /// Remembers an atespace sent in the initial events.
    pub fn insert(&mut self, obj: &Value) {
        self.0.insert(name_of(obj).to_string());
    }

    /// The event this watcher gets for `kind` of `obj` (after scope and selectors), if any.
    pub async fn event(
        &mut self,
        filter: &AtespaceFilter,
        kind: &'static str,
        obj: &Value,
    ) -> Option<&'static str> {
        let name = name_of(obj);
        if kind == "DELETED" {
            // Shown, or visible (deleted after the list this watch follows).
            let shown = self.0.remove(name);
            return (shown || filter.visible(obj).await).then_some("DELETED");
        }
        match (filter.visible(obj).await, self.0.contains(name)) {
            (true, true) => Some(kind),
            (true, false) => {
                self.0.insert(name.to_string());
                Some("ADDED")
            }
            (false, true) => {
                self.0.remove(name);
                Some("DELETED")
            }
            (false, false) => None,
        }
    }
}

/// Whether `sharing` (an ActorTemplate's `spec.sharing`) lets actors of `atespace` use the
/// template: the atespace is listed by name, or its labels match the selector (an empty
/// selector `{}` matches every atespace; no selector matches none).
pub fn shares_with(sharing: Option<&Value>, atespace: &Value) -> bool {
    let Some(sharing) =
        sharing.and_then(|s| serde_json::from_value::<crds::ate::TemplateSharing>(s.clone()).ok())
    else {
        return false;
    };
    let labels: std::collections::BTreeMap<String, String> = atespace
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    sharing.allows(name_of(atespace), &labels)
}

/// Why actors of `actor_ns` may not use the template `tns/tname` (kube's FieldValueForbidden
/// on `spec.template.namespace`).
pub fn not_shared(tname: &str, tns: &str, actor_ns: &str) -> FieldError {
    FieldError::forbidden(
        "spec.template.namespace",
        format!(
            "{} \"{tname}\" in atespace \"{tns}\" is not shared with atespace \"{actor_ns}\" (its spec.sharing must list \"{actor_ns}\" in atespaces or select it with atespaceSelector)",
            ACTOR_TEMPLATES.qualified()
        ),
    )
}

/// The template an actor names: (namespace, name); the namespace defaults to the actor's.
pub fn template_ref(actor: &Value) -> (String, String) {
    let ns = actor
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let tns = actor
        .pointer("/spec/template/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(ns);
    let tname = actor
        .pointer("/spec/template/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    (tns.to_string(), tname.to_string())
}

/// Checks that `actor` may use its template: always in its own atespace; across atespaces
/// only when the template shares itself with the actor's atespace. A template that does not
/// exist yet is admitted (GitOps applies in any order); the scheduler checks again at every
/// resume ([`template_usable`]). Golden actors (the operator boots one per template in the
/// golden atespace `ate-golden`) use every template: creating actors there is a privilege of
/// the system components, never to be granted to a tenant.
pub async fn check_template_use(
    registry: &Registry,
    actor: &Value,
) -> Result<Vec<FieldError>, ApiError> {
    let actor_ns = actor
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (tns, tname) = template_ref(actor);
    if tns == actor_ns || actor_ns == crds::GOLDEN_ATESPACE {
        return Ok(Vec::new());
    }
    let Some(template) = registry.template(&tns, &tname).await? else {
        return Ok(Vec::new());
    };
    template_usable(registry, &template, actor_ns)
        .await
        .map(|ok| {
            if ok {
                Vec::new()
            } else {
                vec![not_shared(&tname, &tns, actor_ns)]
            }
        })
}

/// Whether actors of `actor_ns` may use `template` (same atespace, the golden atespace, or
/// shared with it).
pub async fn template_usable(
    registry: &Registry,
    template: &Value,
    actor_ns: &str,
) -> Result<bool, ApiError> {
    let tns = template
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if tns == actor_ns || actor_ns == crds::GOLDEN_ATESPACE {
        return Ok(true);
    }
    let sharing = template.pointer("/spec/sharing");
    if sharing.is_none() {
        return Ok(false);
    }
    let Some(atespace) = registry.get_opt(&ATESPACES, None, actor_ns).await? else {
        return Ok(false);
    };
    Ok(shares_with(sharing, &atespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ates(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}})
    }

    #[test]
    fn sharing_by_name_and_by_label_selector() {
        let team_a = ates("team-a", json!({"tier": "gold"}));
        let team_b = ates("team-b", json!({"tier": "free"}));
        assert!(!shares_with(None, &team_a));
        assert!(!shares_with(Some(&json!({})), &team_a));
        let by_name = json!({"atespaces": ["team-a"]});
        assert!(shares_with(Some(&by_name), &team_a));
        assert!(!shares_with(Some(&by_name), &team_b));
        let by_label = json!({"atespaceSelector": {"matchLabels": {"tier": "gold"}}});
        assert!(shares_with(Some(&by_label), &team_a));
        assert!(!shares_with(Some(&by_label), &team_b));
        let by_expr = json!({"atespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["free", "gold"]}]}});
        assert!(shares_with(Some(&by_expr), &team_b));
        let everyone = json!({"atespaceSelector": {}});
        assert!(shares_with(Some(&everyone), &team_b));
    }

    #[test]
    fn a_request_about_one_atespace_is_in_its_namespace() {
        assert_eq!(
            authz_namespace(&ATESPACES, None, Some("team-a")),
            Some("team-a")
        );
        assert_eq!(authz_namespace(&ATESPACES, None, None), None);
        assert_eq!(
            authz_namespace(&crds::resources::ACTORS, Some("team-a"), Some("x")),
            Some("team-a")
        );
    }

    #[tokio::test]
    async fn a_filtered_watch_adds_and_deletes_as_visibility_changes() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let open = Arc::new(AtomicBool::new(true));
        let o = open.clone();
        let policy = authz::FnAuthorizer(move |a: &Attributes| {
            if a.namespace == "team-a" && o.load(Ordering::SeqCst) {
                authz::Answer::allow("")
            } else {
                authz::Answer::no_opinion("")
            }
        });
        let chain = authz::Chain::new(vec![], vec![Arc::new(policy)]);
        let alice = UserInfo {
            name: "alice".into(),
            groups: vec![],
            extra: Default::default(),
        };
        let f = AtespaceFilter::atespaces(&chain, &alice);
        let mut shown = Shown::default();
        let a = ates("team-a", json!({}));
        let b = ates("team-b", json!({}));
        assert_eq!(shown.event(&f, "MODIFIED", &a).await, Some("ADDED"));
        assert_eq!(shown.event(&f, "MODIFIED", &a).await, Some("MODIFIED"));
        assert_eq!(shown.event(&f, "ADDED", &b).await, None);
        assert_eq!(shown.event(&f, "DELETED", &b).await, None);
        open.store(false, Ordering::SeqCst);
        assert_eq!(shown.event(&f, "MODIFIED", &a).await, Some("DELETED"));
        assert_eq!(shown.event(&f, "DELETED", &a).await, None);
        open.store(true, Ordering::SeqCst);
        assert_eq!(shown.event(&f, "MODIFIED", &a).await, Some("ADDED"));
        assert_eq!(shown.event(&f, "DELETED", &a).await, Some("DELETED"));
        assert_eq!(f.retain(vec![a.clone(), b.clone()]).await, vec![a.clone()]);
    }
}
