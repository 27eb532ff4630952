//! Limits on failed logins: per username and per client address, in a sliding window.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// How long failed attempts count.
const LIMIT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The limits on failed logins, in proportion to who pays for them:
/// - per username and client address, 3 (below Bitbucket's CAPTCHA): a client that guesses wrong holds up itself,
///   not the user it named, who logs in from their own machine as before;
/// - per username, 10 from all addresses together: guessing one password from many machines stays slow, and
///   holding a user up takes four machines (one would do it against Bitbucket directly);
/// - per client address, 10 across all names, so one machine cannot try a password on many users.
pub(super) struct Limits {
    pair: RateLimit,
    user: RateLimit,
    client: RateLimit,
}

impl Limits {
    pub(super) fn new() -> Limits {
        Limits {
            pair: RateLimit::new(3, LIMIT_WINDOW),
            user: RateLimit::new(10, LIMIT_WINDOW),
            client: RateLimit::new(10, LIMIT_WINDOW),
        }
    }

    pub(super) fn retry_after(&self, user: &str, client: &str, now: Instant) -> Option<Duration> {
        let pair = self.pair.retry_after(&pair(user, client), now);
        let user = self.user.retry_after(user, now);
        let client = self.client.retry_after(client, now);
        pair.max(user).max(client)
    }

    pub(super) fn fail(&mut self, user: &str, client: &str, now: Instant) {
        self.pair.fail(&pair(user, client), now);
        self.user.fail(user, now);
        self.client.fail(client, now);
    }

    /// A login that succeeded forgets the client's own failures for that user; others' failures still count.
    pub(super) fn succeeded(&mut self, user: &str, client: &str) {
        self.pair.clear(&pair(user, client));
    }
}

fn pair(user: &str, client: &str) -> String {
    format!("{user}\n{client}")
}

/// Where a login attempt came from: the peer's address, or, when the peer is a proxy SDP trusts (this machine,
/// as nginx on the gateway VM, or an address given with `--trusted-proxy`), the address that proxy appended to
/// `X-Forwarded-For`. A client that reaches SDP directly cannot choose its address.
pub struct Client(pub String);

impl axum::extract::FromRequestParts<std::sync::Arc<super::Auth>> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        auth: &std::sync::Arc<super::Auth>,
    ) -> Result<Client, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Client(client_address(peer, &parts.headers, &auth.trusted_proxies)))
    }
}

pub(crate) fn client_address(
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    trusted: &[std::net::IpAddr],
) -> String {
    let forwarded = || {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|v| !v.is_empty())
            .map(str::to_string)
    };
    match peer {
        Some(ip) if ip.is_loopback() || trusted.contains(&ip) => forwarded().unwrap_or_else(|| ip.to_string()),
        Some(ip) => ip.to_string(),
        None => "unknown".into(),
    }
}

/// Failed attempts per key (a lower-cased username, or a client address) in a sliding window: after `max` failures within `window`,
/// the key waits until the oldest of them leaves the window. Pure: the caller says what time it is.
#[derive(Debug)]
pub struct RateLimit {
    max: usize,
    window: Duration,
    failures: HashMap<String, VecDeque<Instant>>,
}

impl RateLimit {
    pub fn new(max: usize, window: Duration) -> RateLimit {
        RateLimit {
            max: max.max(1),
            window,
            failures: HashMap::new(),
        }
    }

    /// How long `key` must wait before its next attempt, or `None` when it may try now.
    pub fn retry_after(&self, key: &str, now: Instant) -> Option<Duration> {
        let recent: Vec<&Instant> = self
            .failures
            .get(key)?
            .iter()
            .filter(|t| now.duration_since(**t) < self.window)
            .collect();
        if recent.len() < self.max {
            return None;
        }
        let oldest = recent[recent.len() - self.max];
        Some(self.window - now.duration_since(*oldest))
    }

    pub fn fail(&mut self, key: &str, now: Instant) {
        let window = self.window;
        self.failures
            .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        let q = self.failures.entry(key.to_string()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        q.push_back(now);
        while q.len() > self.max {
            q.pop_front();
        }
    }

    pub fn clear(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_limit_waits_for_the_oldest_failure_to_leave_the_window() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(3, Duration::from_secs(900));
        for i in 0..2 {
            limit.fail("ann", t0 + Duration::from_secs(i * 10));
        }
        assert_eq!(limit.retry_after("ann", t0 + Duration::from_secs(30)), None);
        limit.fail("ann", t0 + Duration::from_secs(30));
        assert_eq!(
            limit.retry_after("ann", t0 + Duration::from_secs(40)),
            Some(Duration::from_secs(860))
        );
        assert_eq!(limit.retry_after("bob", t0 + Duration::from_secs(40)), None);
        assert_eq!(limit.retry_after("ann", t0 + Duration::from_secs(900)), None);
        limit.clear("ann");
        assert_eq!(limit.retry_after("ann", t0 + Duration::from_secs(41)), None);
    }

    #[test]
    fn a_client_that_guesses_wrong_holds_up_itself_and_many_clients_hold_up_the_user() {
        let t0 = Instant::now();
        let mut limits = Limits::new();
        for _ in 0..3 {
            limits.fail("ann", "10.0.0.66", t0);
        }
        assert!(
            limits.retry_after("ann", "10.0.0.66", t0).is_some(),
            "the guesser waits"
        );
        assert_eq!(
            limits.retry_after("ann", "10.0.0.7", t0),
            None,
            "ann from her own machine does not"
        );
        assert_eq!(
            limits.retry_after("bob", "10.0.0.66", t0),
            None,
            "another name from the guesser does not"
        );
        for client in ["10.0.0.67", "10.0.0.68"] {
            for _ in 0..3 {
                limits.fail("ann", client, t0);
            }
        }
        assert_eq!(
            limits.retry_after("ann", "10.0.0.7", t0),
            None,
            "nine failures from three machines"
        );
        limits.fail("ann", "10.0.0.69", t0);
        assert_eq!(
            limits.retry_after("ann", "10.0.0.7", t0),
            Some(LIMIT_WINDOW),
            "the tenth, from a fourth machine, holds ann up everywhere"
        );
        assert_eq!(limits.retry_after("ann", "10.0.0.7", t0 + LIMIT_WINDOW), None);
        limits.succeeded("ann", "10.0.0.66");
        assert_eq!(
            limits.retry_after("ann", "10.0.0.66", t0 + Duration::from_secs(1)),
            Some(LIMIT_WINDOW - Duration::from_secs(1)),
            "others' failures still count"
        );
    }

    #[test]
    fn the_client_is_the_peer_unless_nginx_on_this_machine_says_who() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, 10.0.0.7"));
        let local = Some("127.0.0.1".parse().unwrap());
        let remote = Some("10.9.9.9".parse().unwrap());
        assert_eq!(client_address(local, &h, &[]), "10.0.0.7", "the address nginx appended");
        assert_eq!(
            client_address(remote, &h, &[]),
            "10.9.9.9",
            "a remote peer cannot pick its address"
        );
        let proxy = "10.9.9.9".parse().unwrap();
        assert_eq!(
            client_address(remote, &h, &[proxy]),
            "10.0.0.7",
            "unless it is a trusted proxy"
        );
        assert_eq!(client_address(local, &HeaderMap::new(), &[]), "127.0.0.1");
        assert_eq!(client_address(None, &h, &[]), "unknown");
    }
}
