//! Clone a session's repositories into its sandbox at provision.
//!
//! For each `github_repository` resource (SDK shape: `url`, `checkout`
//! `{type: branch, name}` | `{type: commit, sha}`, `mount_path`, default
//! `/workspace/<repo-name>`), the agent runs `git clone` **inside** the
//! sandbox, through the executor's bash, with the sandbox's own tool
//! environment: the request goes out through `HTTPS_PROXY` to the
//! vault-bridge, which adds the session's token for that repository. The
//! sandbox never holds the token; the remote stays the real URL.
//!
//! A repository that does not clone does not fail provision: it becomes a
//! [`ResourceError`] with the SDK's error type (the session goes on without
//! it), classified from git's own message.

use std::time::Duration;

use protocol::sandbox::ResourceError;
use serde_json::Value;

use super::executor_client::ExecutorClient;

/// How long one clone (and checkout) may take.
pub const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
/// Marker the clone script prints when `git clone` failed.
const CLONE_FAILED: &str = "airlock-clone-failed";
/// Marker the clone script prints when the checkout failed.
const CHECKOUT_FAILED: &str = "airlock-checkout-failed";

/// What to check out after the clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkout {
    /// The remote's default branch.
    Default,
    /// A branch (`git clone --branch`).
    Branch(String),
    /// A commit (checked out detached after the clone).
    Commit(String),
}

/// One repository to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// HTTPS URL without userinfo.
    pub url: String,
    /// Absolute path in the sandbox.
    pub mount_path: String,
    /// What to check out.
    pub checkout: Checkout,
}

/// The repositories of a session's resources. A resource that cannot be
/// cloned safely (not https, credentials in the URL, a relative or odd mount
/// path, a branch or sha with characters git would not accept) is an error
/// up front, never run.
pub fn from_resources(resources: &[Value]) -> (Vec<Repository>, Vec<ResourceError>) {
    let mut repos = Vec::new();
    let mut errors = Vec::new();
    for r in resources {
        if r.get("type").and_then(Value::as_str) != Some("github_repository") {
            continue;
        }
        let url = r.get("url").and_then(Value::as_str).unwrap_or_default();
        match parse_one(r, url) {
            Ok(repo) => repos.push(repo),
            Err(message) => errors.push(ResourceError {
                error_type: "repository_clone_error".into(),
                repository_url: url.to_owned(),
                message,
            }),
        }
    }
    (repos, errors)
}

fn parse_one(r: &Value, url: &str) -> Result<Repository, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid repository url: {e}"))?;
    if parsed.scheme() != "https" {
        return Err("repository urls must be https".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("repository urls may not carry credentials".into());
    }
    let name = parsed
        .path_segments()
        .and_then(|mut s| s.rfind(|seg| !seg.is_empty()).map(str::to_owned))
        .map(|n| n.trim_end_matches(".git").to_owned())
        .filter(|n| !n.is_empty())
        .ok_or("the repository url has no name")?;
    let mount_path = match r.get("mount_path").and_then(Value::as_str) {
        Some(p) => p.to_owned(),
        None => format!("/workspace/{name}"),
    };
    if !safe_path(&mount_path) {
        return Err(format!(
            "invalid mount_path {mount_path:?}: expected an absolute path without `..`"
        ));
    }
    let checkout = match r.get("checkout") {
        None | Some(Value::Null) => Checkout::Default,
        Some(c) => match (
            c.get("type").and_then(Value::as_str),
            c.get("name").and_then(Value::as_str),
            c.get("sha").and_then(Value::as_str),
        ) {
            (Some("branch"), Some(n), _) if safe_ref(n) => Checkout::Branch(n.to_owned()),
            (Some("commit"), _, Some(s))
                if s.len() >= 4 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Checkout::Commit(s.to_owned())
            }
            _ => return Err(format!("invalid checkout {c}")),
        },
    };
    Ok(Repository {
        url: url.to_owned(),
        mount_path,
        checkout,
    })
}

fn safe_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() <= 4096
        && !p.split('/').any(|s| s == "..")
        && !p.bytes().any(|b| b.is_ascii_control())
}

fn safe_ref(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && !r.starts_with('-')
        && !r.contains("..")
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
}

/// Single-quote `s` for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The bash script that clones `r` (in a subshell: the sandbox's shell
/// keeps no state from it).
pub fn script(r: &Repository) -> String {
    let dest = quote(&r.mount_path);
    let branch = match &r.checkout {
        Checkout::Branch(b) => format!("--branch {} ", quote(b)),
        _ => String::new(),
    };
    let checkout = match &r.checkout {
        Checkout::Commit(sha) => format!(
            " && {{ git -C {dest} -c advice.detachedHead=false checkout --quiet {} 2>&1 || {{ echo {CHECKOUT_FAILED}; false; }}; }}",
            quote(sha)
        ),
        _ => String::new(),
    };
    format!(
        "( mkdir -p \"$(dirname {dest})\" && GIT_TERMINAL_PROMPT=0 git clone --quiet {branch}-- {url} {dest} 2>&1 || {{ echo {CLONE_FAILED}; false; }} ){checkout}",
        url = quote(&r.url),
    )
}

/// The SDK error type for a failed clone, from git's output.
pub fn classify(output: &str) -> &'static str {
    let o = output.to_ascii_lowercase();
    if o.contains(CHECKOUT_FAILED) || (o.contains("remote branch") && o.contains("not found")) {
        "repository_checkout_error"
    } else if o.contains("401")
        || o.contains("authentication failed")
        || o.contains("could not read username")
    {
        "repository_authentication_error"
    } else if o.contains("403") || o.contains("forbidden") {
        "repository_forbidden_error"
    } else if o.contains("404") || o.contains("not found") {
        "repository_not_found_error"
    } else {
        "repository_clone_error"
    }
}

/// Clone each repository into the sandbox; the ones that failed.
pub async fn clone_all(client: &ExecutorClient, repos: &[Repository]) -> Vec<ResourceError> {
    let mut errors = Vec::new();
    for r in repos {
        let input = serde_json::json!({ "command": script(r) });
        let failed = |message: String| ResourceError {
            error_type: classify(&message).to_owned(),
            repository_url: r.url.clone(),
            message,
        };
        match client.call("bash", &input, None, CLONE_TIMEOUT).await {
            Ok(res) if !res.is_error => {
                tracing::info!(url = %r.url, mount_path = %r.mount_path, "repository cloned");
            }
            Ok(res) => {
                let text: String = res
                    .content
                    .iter()
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n");
                let text = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n");
                tracing::warn!(url = %r.url, error = %text, "repository did not clone");
                errors.push(failed(text));
            }
            Err(e) => {
                tracing::warn!(url = %r.url, error = %e, "repository clone did not finish");
                errors.push(ResourceError {
                    error_type: "repository_clone_error".into(),
                    repository_url: r.url.clone(),
                    message: format!("the clone did not finish: {e}"),
                });
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_parse_with_sdk_defaults_and_bad_ones_are_errors() {
        let (repos, errors) = from_resources(&[
            json!({"type": "github_repository", "url": "https://git.example.com/org/app.git"}),
            json!({"type": "github_repository", "url": "https://git.example.com/org/lib",
                   "mount_path": "/src/lib", "checkout": {"type": "branch", "name": "release/1.x"}}),
            json!({"type": "github_repository", "url": "https://git.example.com/org/pin",
                   "checkout": {"type": "commit", "sha": "0123abcd"}}),
            json!({"type": "file", "file_id": "f"}),
            json!({"type": "github_repository", "url": "http://git.example.com/a"}),
            json!({"type": "github_repository", "url": "https://u:p@git.example.com/a"}),
            json!({"type": "github_repository", "url": "https://git.example.com/a", "mount_path": "/x/../etc"}),
            json!({"type": "github_repository", "url": "https://git.example.com/a",
                   "checkout": {"type": "branch", "name": "--upload-pack=x"}}),
        ]);
        assert_eq!(
            repos,
            vec![
                Repository {
                    url: "https://git.example.com/org/app.git".into(),
                    mount_path: "/workspace/app".into(),
                    checkout: Checkout::Default
                },
                Repository {
                    url: "https://git.example.com/org/lib".into(),
                    mount_path: "/src/lib".into(),
                    checkout: Checkout::Branch("release/1.x".into())
                },
                Repository {
                    url: "https://git.example.com/org/pin".into(),
                    mount_path: "/workspace/pin".into(),
                    checkout: Checkout::Commit("0123abcd".into())
                },
            ]
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors
            .iter()
            .all(|e| e.error_type == "repository_clone_error"));
    }

    #[test]
    fn scripts_quote_everything() {
        let s = script(&Repository {
            url: "https://git.example.com/o/a'b.git".into(),
            mount_path: "/workspace/a b".into(),
            checkout: Checkout::Branch("main".into()),
        });
        assert!(s.contains(r"'https://git.example.com/o/a'\''b.git'"), "{s}");
        assert!(s.contains("'/workspace/a b'"), "{s}");
        assert!(s.contains("--branch 'main' --"), "{s}");
    }

    #[test]
    fn git_messages_map_to_sdk_error_types() {
        for (out, want) in [
            (
                "fatal: Authentication failed for 'https://x/a.git/'\nairlock-clone-failed",
                "repository_authentication_error",
            ),
            (
                "remote: 403 Forbidden\nairlock-clone-failed",
                "repository_forbidden_error",
            ),
            (
                "fatal: repository 'https://x/a.git/' not found\nairlock-clone-failed",
                "repository_not_found_error",
            ),
            (
                "warning: Remote branch nope not found in upstream origin\nairlock-clone-failed",
                "repository_checkout_error",
            ),
            (
                "error: pathspec 'abc' did not match\nairlock-checkout-failed",
                "repository_checkout_error",
            ),
            (
                "fatal: unable to access: Could not resolve proxy\nairlock-clone-failed",
                "repository_clone_error",
            ),
        ] {
            assert_eq!(classify(out), want, "{out}");
        }
    }
}
