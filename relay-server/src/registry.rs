//! The registry: which session holds which tunnel name. It is the relay's one piece of
//! shared mutable state, behind the [`Registry`] trait so that a relay fleet can later
//! keep it in a distributed store; no I/O happens while its lock is held.

use std::collections::HashMap;
use std::sync::RwLock;

use shared_proto::TunnelName;

use crate::tokens::TokenName;

/// Relay-assigned identifier of one client session (one QUIC connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a tunnel's traffic goes: a tunnel inside a live session.
#[derive(Debug, Clone)]
pub struct Route {
    /// The session that holds the tunnel.
    pub session: SessionId,
    /// The token that session authenticated with.
    pub token: TokenName,
    /// The tunnel's id within its session (carried in data-stream heads).
    pub tunnel_id: u32,
    /// The session's QUIC connection, on which data streams are opened.
    pub conn: quinn::Connection,
    /// The tunnel's edge policy and refusal notices.
    pub edge: std::sync::Arc<crate::policy::TunnelEdge>,
}

/// A name is held by a session of another token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tunnel name {0} is in use by another client")]
pub struct NameInUse(pub String);

/// Name → route, for one relay (or, behind this trait, a fleet).
pub trait Registry: Send + Sync + 'static {
    /// The route for `name` (already lower-cased), if a session holds it.
    fn lookup(&self, name: &str) -> Option<Route>;

    /// Binds `name` to `route`. A route of the *same token* is replaced at once and
    /// answered (so a client that reconnects after sleep or a network change takes its
    /// name back before the relay notices the old connection died); one of another
    /// token is an error.
    fn bind(&self, name: &TunnelName, route: Route) -> Result<Option<Route>, NameInUse>;

    /// Unbinds `name` if `session` still holds it.
    fn release(&self, name: &TunnelName, session: SessionId);

    /// Whether `session` holds any name.
    fn holds_session(&self, session: SessionId) -> bool;

    /// How many names are bound.
    fn len(&self) -> usize;

    /// Whether no name is bound.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The registry of a single relay process.
#[derive(Debug, Default)]
pub struct LocalRegistry {
    routes: RwLock<HashMap<String, Route>>,
}

impl LocalRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Registry for LocalRegistry {
    fn lookup(&self, name: &str) -> Option<Route> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(name).cloned()
    }

    fn bind(&self, name: &TunnelName, route: Route) -> Result<Option<Route>, NameInUse> {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        match routes.get(name.as_str()) {
            Some(old) if old.token != route.token => Err(NameInUse(name.to_string())),
            _ => Ok(routes.insert(name.as_str().to_owned(), route)),
        }
    }

    fn release(&self, name: &TunnelName, session: SessionId) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if routes
            .get(name.as_str())
            .is_some_and(|r| r.session == session)
        {
            routes.remove(name.as_str());
        }
    }

    fn holds_session(&self, session: SessionId) -> bool {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.values().any(|r| r.session == session)
    }

    fn len(&self) -> usize {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}
