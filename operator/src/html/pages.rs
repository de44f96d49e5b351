//! The operator's read-only report pages (`--ui`, chart value `ui.enabled`), reached with
//! `kubectl port-forward`: `/reports` lists the LeakReports, `/reports/NS/NAME` is one as
//! [`super::render`] draws it. GET only; it reads what the operator's ServiceAccount may read
//! (LeakReports), nothing else.

use std::fmt::Write as _;
use std::sync::Arc;

use hyper::StatusCode;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::{escape, generated_by, head, render};
use crate::crd::LeakReport;
use crate::http::Pages;

/// The pages, reading through `client`; `namespaces` empty: every namespace.
pub fn pages(client: Client, namespaces: Vec<String>) -> Pages {
    let namespaces = Arc::new(namespaces);
    Arc::new(move |path: String| {
        let (client, namespaces) = (client.clone(), namespaces.clone());
        Box::pin(async move { page(client, &namespaces, &path).await })
    })
}

async fn page(client: Client, namespaces: &[String], path: &str) -> (StatusCode, String) {
    let rest = path.strip_prefix("/reports").unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] => match list(client, namespaces).await {
            Ok(reports) => (StatusCode::OK, index(&reports)),
            Err(e) => (StatusCode::BAD_GATEWAY, message_page("LeakReports", &e)),
        },
        [ns, name] if is_name(ns) && is_name(name) => {
            if !namespaces.is_empty() && !namespaces.iter().any(|n| n == ns) {
                return (
                    StatusCode::NOT_FOUND,
                    message_page("Not found", "no such LeakReport"),
                );
            }
            match Api::<LeakReport>::namespaced(client, ns)
                .get_opt(name)
                .await
            {
                Ok(Some(r)) => (StatusCode::OK, render(&r, &generated_by())),
                Ok(None) => (
                    StatusCode::NOT_FOUND,
                    message_page("Not found", "no such LeakReport"),
                ),
                Err(e) => (
                    StatusCode::BAD_GATEWAY,
                    message_page("LeakReport", &format!("reading {ns}/{name}: {e}")),
                ),
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            message_page("Not found", "no such page"),
        ),
    }
}

async fn list(client: Client, namespaces: &[String]) -> Result<Vec<LeakReport>, String> {
    let lp = ListParams::default();
    let mut reports = Vec::new();
    if namespaces.is_empty() {
        let api: Api<LeakReport> = Api::all(client);
        reports = api.list(&lp).await.map_err(|e| e.to_string())?.items;
    } else {
        for ns in namespaces {
            let api: Api<LeakReport> = Api::namespaced(client.clone(), ns);
            reports.extend(api.list(&lp).await.map_err(|e| format!("{ns}: {e}"))?.items);
        }
    }
    Ok(reports)
}

/// A DNS-1123 name (namespaces and LeakReports have such names): nothing else is asked for.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Every report, leaks first, then by kills.
pub fn index(reports: &[LeakReport]) -> String {
    let mut rows: Vec<&LeakReport> = reports.iter().collect();
    let rank = |r: &LeakReport| {
        let s = r.status.as_ref();
        (
            std::cmp::Reverse(s.and_then(|s| s.verdict) == Some(crate::crd::Verdict::Leak)),
            std::cmp::Reverse(s.map_or(0, |s| s.oom_kills)),
            r.namespace().unwrap_or_default(),
            r.name_any(),
        )
    };
    rows.sort_by_key(|r| rank(r));
    let mut h = head("LeakReports");
    let _ = writeln!(
        h,
        "<h1>LeakReports</h1>\n<p class=\"meta\">{} reports</p>",
        rows.len()
    );
    h.push_str(
        "<table id=\"reports\">\n<tr><th>Report</th><th>Workload</th><th>Verdict</th><th>Suspect</th><th>Growth</th><th class=\"num\">OOM kills</th></tr>\n",
    );
    for r in rows {
        let (ns, name) = (r.namespace().unwrap_or_default(), r.name_any());
        let s = r.status.clone().unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr><td><a href=\"/reports/{}/{}\">{}/{}</a></td><td>{}</td><td>{}</td><td class=\"path\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            escape(&ns),
            escape(&name),
            escape(&ns),
            escape(&name),
            escape(&r.spec.workload.display),
            escape(&super::verdict_word(&s)),
            escape(s.suspects.first().map_or("", |x| x.path.as_str())),
            escape(s.growth.as_deref().unwrap_or("")),
            s.oom_kills
        );
    }
    let _ = write!(
        h,
        "</table>\n<footer>{}</footer>\n</main>\n</body>\n</html>\n",
        escape(&generated_by())
    );
    h
}

fn message_page(title: &str, message: &str) -> String {
    let mut h = head(title);
    let _ = write!(
        h,
        "<h1>{}</h1>\n<p>{}</p>\n<p><a href=\"/reports\">All reports</a></p>\n</main>\n</body>\n</html>\n",
        escape(title),
        escape(message)
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_are_asked_for() {
        assert!(is_name("shop") && is_name("deployment-leaky-flask") && is_name("a.b"));
        for bad in ["", "..%2f", "a/b", "Shop", "a b", "<x>", &"a".repeat(254)] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_index_links_every_report_leaks_first_and_escapes() {
        let mk = |ns: &str, name: &str, leak: bool, kills: i64| {
            let mut r: LeakReport = serde_json::from_value(serde_json::json!({
                "apiVersion": "leakhunt.dev/v1alpha1", "kind": "LeakReport",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"workload": {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "<b>w</b>", "display": "Deployment/<b>w</b>"}}
            }))
            .unwrap();
            let mut s = crate::crd::LeakReportStatus {
                oom_kills: kills,
                ..Default::default()
            };
            if leak {
                s.verdict = Some(crate::crd::Verdict::Leak);
            }
            r.status = Some(s);
            r
        };
        let page = index(&[
            mk("a", "quiet", false, 0),
            mk("b", "killed", false, 3),
            mk("c", "leaky", true, 1),
        ]);
        let order: Vec<usize> = ["/reports/c/leaky", "/reports/b/killed", "/reports/a/quiet"]
            .iter()
            .map(|l| page.find(l).expect(l))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert!(!page.contains("<b>") && page.contains("&lt;b&gt;w&lt;/b&gt;"));
    }
}
