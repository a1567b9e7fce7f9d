//! Connection gate: inbound connections of peers not (yet) admitted get few
//! slots, in all and per remote IP, so a flood of fresh keys cannot take
//! the slots that admitted peers and our own dials need. Outbound dials and
//! admitted peers do not count. The counting is a pure [`Slots`] table; the
//! [`Gate`] behaviour feeds it from the swarm.

use libp2p::core::{transport::PortUse, Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

/// Limits on unadmitted inbound connections.
#[derive(Clone, Debug)]
pub struct GateConfig {
    pub max_unadmitted: usize,
    pub max_unadmitted_per_ip: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self { max_unadmitted: 32, max_unadmitted_per_ip: 8 }
    }
}

#[derive(Debug)]
struct Slot {
    ip: Option<IpAddr>,
    peer: Option<PeerId>,
}

/// Unadmitted inbound connections, by connection, with counts per IP.
#[derive(Debug, Default)]
pub struct Slots {
    cfg: GateConfig,
    open: HashMap<ConnectionId, Slot>,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("too many connections awaiting admission")]
    TooManyUnadmitted,
    #[error("too many connections awaiting admission from this address")]
    PerIpLimit,
}

impl Slots {
    pub fn new(cfg: GateConfig) -> Self {
        Self { cfg, ..Default::default() }
    }

    /// A new inbound connection from `ip` (before its handshake).
    pub fn open(&mut self, conn: ConnectionId, ip: Option<IpAddr>) -> Result<(), Denied> {
        if self.open.len() >= self.cfg.max_unadmitted {
            return Err(Denied::TooManyUnadmitted);
        }
        if let Some(ip) = ip {
            let n = self.per_ip.entry(ip).or_default();
            if *n >= self.cfg.max_unadmitted_per_ip {
                return Err(Denied::PerIpLimit);
            }
            *n += 1;
        }
        self.open.insert(conn, Slot { ip, peer: None });
        Ok(())
    }

    /// The handshake named the peer; an admitted one gives its slot back.
    pub fn identified(&mut self, conn: ConnectionId, peer: PeerId, admitted: bool) {
        if admitted {
            self.close(conn);
        } else if let Some(s) = self.open.get_mut(&conn) {
            s.peer = Some(peer);
        }
    }

    /// `peer` was admitted: its connections leave the table.
    pub fn admitted(&mut self, peer: &PeerId) {
        let conns: Vec<ConnectionId> =
            self.open.iter().filter(|(_, s)| s.peer.as_ref() == Some(peer)).map(|(c, _)| *c).collect();
        for c in conns {
            self.close(c);
        }
    }

    pub fn close(&mut self, conn: ConnectionId) {
        if let Some(Slot { ip: Some(ip), .. }) = self.open.remove(&conn) {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The behaviour: denies inbound connections beyond the [`Slots`] limits.
pub struct Gate {
    slots: Slots,
    admitted: HashSet<PeerId>,
}

impl Gate {
    pub fn new(cfg: GateConfig) -> Self {
        Self { slots: Slots::new(cfg), admitted: HashSet::new() }
    }

    pub fn admit(&mut self, peer: PeerId) {
        self.admitted.insert(peer);
        self.slots.admitted(&peer);
    }

    pub fn forget(&mut self, peer: &PeerId) {
        self.admitted.remove(peer);
    }

    pub fn unadmitted_inbound(&self) -> usize {
        self.slots.len()
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        conn: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.slots.open(conn, ip_of(remote)).map_err(ConnectionDenied::new)
    }

    fn handle_established_inbound_connection(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.slots.identified(conn, peer, self.admitted.contains(&peer));
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _conn: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(c) => self.slots.close(c.connection_id),
            FromSwarm::ListenFailure(f) => self.slots.close(f.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _peer: PeerId, _conn: ConnectionId, event: THandlerOutEvent<Self>) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    #[test]
    fn unadmitted_connections_are_capped_in_all_and_per_ip() {
        let mut s = Slots::new(GateConfig { max_unadmitted: 5, max_unadmitted_per_ip: 2 });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let ids: Vec<ConnectionId> = (0..10).map(|_| ConnectionId::new_unchecked(rand::random())).collect();
        assert_eq!(s.open(ids[0], Some(a)), Ok(()));
        assert_eq!(s.open(ids[1], Some(a)), Ok(()));
        assert_eq!(s.open(ids[2], Some(a)), Err(Denied::PerIpLimit));
        assert_eq!(s.open(ids[3], Some(b)), Ok(()));
        assert_eq!(s.open(ids[4], None), Ok(()));
        assert_eq!(s.open(ids[5], None), Ok(()));
        assert_eq!(s.open(ids[6], None), Err(Denied::TooManyUnadmitted));
        // Closing frees the slot; admission frees it too.
        s.close(ids[0]);
        assert_eq!(s.open(ids[7], Some(a)), Ok(()));
        let p = peer();
        s.identified(ids[1], p, false);
        s.admitted(&p);
        assert_eq!(s.len(), 4);
        assert_eq!(s.open(ids[8], Some(a)), Ok(()), "the admitted peer's slot went back to its IP");
        // An admitted peer's new connection never holds a slot.
        s.close(ids[8]);
        s.identified(ids[7], peer(), true);
        assert_eq!(s.per_ip.get(&a), None);
    }

    #[test]
    fn ips_are_read_from_multiaddrs() {
        assert_eq!(ip_of(&"/ip4/127.0.0.1/tcp/1".parse().unwrap()), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ip_of(&"/ip6/::1/tcp/1".parse().unwrap()), Some("::1".parse().unwrap()));
        assert_eq!(ip_of(&"/memory/5".parse().unwrap()), None);
    }
}
