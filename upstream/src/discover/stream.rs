//! The usable endpoints ([`super::usable`]) as a stream of tower [`Change`]s, which is what
//! `tower::discover::Discover` is (tower implements it for every such stream). Each time the
//! endpoint set or an endpoint's health changes, the usable set is computed again and
//! compared with the one the consumer holds; what differs is sent, inserts first.
//!
//! The stream never ends and never fails: when the set is gone it stays pending, so the
//! consumer keeps its last endpoints, as tonic's balanced channel does when its sender
//! drops. (tower's p2c polls discovery again after it ends, which some streams do not
//! survive; and an error from discovery would fail the balancer for good.)

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{Stream, StreamExt, stream};
use tower::discover::Change;

use super::usable::usable;
use crate::endpoints::SetWatch;
use crate::select::ZoneRouting;

/// The usable endpoints of `watch`'s set as inserts and removals, each inserted endpoint's
/// service made by `make`. `keep_alive` is held as long as the stream: whatever must live
/// for the set to stay current (the upstream's background tasks).
pub fn changes<S, F, K>(
    watch: SetWatch,
    zones: Option<Arc<ZoneRouting>>,
    make: F,
    keep_alive: K,
) -> impl Stream<Item = Result<Change<SocketAddr, S>, Infallible>> + Send + 'static
where
    F: FnMut(SocketAddr) -> S + Send + 'static,
    S: Send + 'static,
    K: Send + 'static,
{
    let state = State {
        watch,
        zones,
        held: BTreeSet::new(),
        make,
        _keep_alive: keep_alive,
    };
    stream::unfold(state, |mut state| async move {
        let batch = state.next_batch().await;
        Some((stream::iter(batch), state))
    })
    .flatten()
}

/// The stream's state between batches.
struct State<F, K> {
    watch: SetWatch,
    zones: Option<Arc<ZoneRouting>>,
    /// What the consumer holds: everything sent so far, applied.
    held: BTreeSet<SocketAddr>,
    make: F,
    _keep_alive: K,
}

impl<S, F: FnMut(SocketAddr) -> S, K> State<F, K> {
    /// Waits until the usable set differs from the one held, and returns the changes, never
    /// none: inserts first, so that a consumer applying them one at a time is not left
    /// without endpoints when others replace them. Once the set is gone, never returns.
    async fn next_batch(&mut self) -> Vec<Result<Change<SocketAddr, S>, Infallible>> {
        loop {
            let usable = usable(&self.watch.snapshot().endpoints, self.zones.as_deref());
            if usable != self.held {
                let inserted: Vec<SocketAddr> = usable.difference(&self.held).copied().collect();
                let removed: Vec<SocketAddr> = self.held.difference(&usable).copied().collect();
                tracing::debug!(?inserted, ?removed, "usable endpoints changed");
                self.held = usable;
                let inserts = inserted
                    .into_iter()
                    .map(|addr| Ok(Change::Insert(addr, (self.make)(addr))));
                let removes = removed.into_iter().map(|addr| Ok(Change::Remove(addr)));
                return inserts.chain(removes).collect();
            }
            if !self.watch.changed().await {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::endpoints::{Discovery, EndpointSet};

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 3000))
    }

    fn addrs(last_octets: &[u8]) -> BTreeSet<SocketAddr> {
        last_octets.iter().map(|n| addr(*n)).collect()
    }

    /// A change with the service left out, to compare.
    fn key(change: Result<Change<SocketAddr, SocketAddr>, Infallible>) -> (bool, SocketAddr) {
        match change {
            Ok(Change::Insert(addr, made)) => {
                assert_eq!(addr, made, "made for its own address");
                (true, addr)
            }
            Ok(Change::Remove(addr)) => (false, addr),
        }
    }

    /// The next `n` changes, each within a second of the paused clock.
    async fn next<St>(changes: &mut St, n: usize) -> Vec<(bool, SocketAddr)>
    where
        St: Stream<Item = Result<Change<SocketAddr, SocketAddr>, Infallible>> + Unpin,
    {
        let mut got = Vec::new();
        for _ in 0..n {
            let change = tokio::time::timeout(Duration::from_secs(1), changes.next()).await;
            got.push(key(change
                .expect("a change")
                .expect("the stream never ends")));
        }
        got
    }

    /// True when the stream has nothing to say for a second of the paused clock.
    async fn quiet<St: Stream + Unpin>(changes: &mut St) -> bool {
        tokio::time::timeout(Duration::from_secs(1), changes.next())
            .await
            .is_err()
    }

    fn stream_of(
        set: &EndpointSet,
    ) -> impl Stream<Item = Result<Change<SocketAddr, SocketAddr>, Infallible>> + Unpin + use<>
    {
        Box::pin(changes(set.watch(), None, |addr| addr, ()))
    }

    #[tokio::test(start_paused = true)]
    async fn answers_and_health_become_inserts_and_removals() {
        let set = EndpointSet::for_tests();
        let mut changes = stream_of(&set);
        assert!(quiet(&mut changes).await, "nothing known yet");

        set.apply(&addrs(&[1, 2]), Discovery::Resolved);
        assert_eq!(
            next(&mut changes, 2).await,
            [(true, addr(1)), (true, addr(2))],
            "unproven, held while nothing is proven"
        );
        let endpoints = set.snapshot().endpoints.clone();
        set.probed(&endpoints[0], true, true, Instant::now());
        assert_eq!(next(&mut changes, 1).await, [(false, addr(2))]);

        set.probed(&endpoints[1], true, true, Instant::now());
        assert_eq!(next(&mut changes, 1).await, [(true, addr(2))]);
        set.probed(&endpoints[0], false, true, Instant::now());
        assert_eq!(next(&mut changes, 1).await, [(false, addr(1))], "ejected");

        set.apply(&addrs(&[2, 3]), Discovery::Resolved);
        assert!(quiet(&mut changes).await, "10.0.0.3 is not proven yet");
        let endpoints = set.snapshot().endpoints.clone();
        endpoints[1].record_success();
        assert_eq!(next(&mut changes, 1).await, [(true, addr(3))]);
        set.apply(&addrs(&[3]), Discovery::Resolved);
        assert_eq!(next(&mut changes, 1).await, [(false, addr(2))], "left DNS");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replacement_is_inserted_before_the_endpoint_it_replaces_is_removed() {
        let set = EndpointSet::for_tests();
        let mut changes = stream_of(&set);
        set.apply(&addrs(&[1]), Discovery::Resolved);
        assert_eq!(next(&mut changes, 1).await, [(true, addr(1))]);
        set.apply(&addrs(&[2]), Discovery::Resolved);
        assert_eq!(
            next(&mut changes, 2).await,
            [(true, addr(2)), (false, addr(1))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_stays_pending_once_the_set_is_gone() {
        let set = EndpointSet::for_tests();
        set.apply(&addrs(&[1]), Discovery::Resolved);
        let mut changes = stream_of(&set);
        assert_eq!(next(&mut changes, 1).await, [(true, addr(1))]);
        drop(set);
        assert!(quiet(&mut changes).await);
        assert!(quiet(&mut changes).await, "polled again after the set went");
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_keeps_what_it_is_given_alive() {
        let set = EndpointSet::for_tests();
        let kept = Arc::new(());
        let changes = changes(set.watch(), None, |addr| addr, Arc::clone(&kept));
        assert_eq!(Arc::strong_count(&kept), 2);
        drop(changes);
        assert_eq!(Arc::strong_count(&kept), 1);
    }

    #[test]
    fn the_stream_is_a_tower_discover() {
        fn discover<D: tower::discover::Discover<Key = SocketAddr, Error = Infallible>>(_: &D) {}
        let set = EndpointSet::for_tests();
        discover(&stream_of(&set));
    }
}
