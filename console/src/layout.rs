//! The page chrome: head, navigation, who is signed in.

use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::auth::SignedIn;

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Airlock console" }
            link rel="stylesheet" href="/console/static/console.css";
            script src="/console/static/console.js" defer {}
        }
    }
}

/// A page without navigation (sign-in, errors).
pub(crate) fn bare(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body { main { (body) } }
            }
        }
        .into_string(),
    )
}

/// A page for a signed-in key.
pub(crate) fn page(title: &str, who: &SignedIn, body: Markup) -> Response {
    let role = who.role().as_str();
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    header.top {
                        span.brand { "Airlock" }
                        nav aria-label="Main" {
                            a #nav-sessions href="/console/sessions" { "Sessions" }
                            a #nav-agents href="/console/agents" { "Agents" }
                            a #nav-audit href="/console/audit" { "Audit" }
                        }
                        div #whoami data-role=(role) data-key-id=(who.key_id()) {
                            "Signed in as " strong { (who.session.key_name) } " (" (role) ") "
                            form.inline method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(who.csrf());
                                button type="submit" #sign-out { "Sign out" }
                            }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
    .into_response()
}

/// The hidden CSRF input of a form.
pub(crate) fn csrf_input(who: &SignedIn) -> Markup {
    html! { input type="hidden" name="csrf" value=(who.csrf()); }
}
