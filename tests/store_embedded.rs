//! The embedded store through the store contract, plus what only it promises.

mod contract;

use std::sync::Arc;

use simplechat::cache::Cache;
use simplechat::message::NewMessage;
use simplechat::store::embedded::EmbeddedStore;
use simplechat::store::{Cursor, Inserted, Store};

const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_the_contract() {
    let root = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicUsize::new(0);
    contract::run_all(|live| {
        let dir = root.path().join(
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                .to_string(),
        );
        async move {
            Arc::new(
                EmbeddedStore::open(&dir, WRITE_TIMEOUT, live)
                    .await
                    .expect("open"),
            ) as Arc<dyn Store>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_every_message_and_fills_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), WRITE_TIMEOUT, Cache::new())
        .await
        .unwrap();
    for i in 0..10 {
        let new = NewMessage::validate("a", &format!("t{i}"), None).unwrap();
        assert!(matches!(store.insert(new).await, Ok(Inserted::Created(_))));
    }
    store.close().await;
    assert!(store
        .insert(NewMessage::validate("a", "late", None).unwrap())
        .await
        .is_err());

    let live = Cache::new();
    let store = EmbeddedStore::open(dir.path(), WRITE_TIMEOUT, live.clone())
        .await
        .unwrap();
    let all = store.list(Cursor::Latest, 100).await.unwrap();
    assert_eq!(all.len(), 10);
    let cached: Vec<_> = live
        .latest(100)
        .unwrap()
        .iter()
        .map(|e| e.message.text.clone())
        .collect();
    assert_eq!(cached, (0..10).map(|i| format!("t{i}")).collect::<Vec<_>>());
    store.close().await;
}

/// The cache is handed the bytes the store wrote instead of serializing the
/// message again: what subscribers and listings are sent must still be the
/// message exactly as a read of the store gives it, as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_carry_the_stored_message_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let live = Cache::new();
    let store = EmbeddedStore::open(dir.path(), WRITE_TIMEOUT, live.clone())
        .await
        .unwrap();
    let mut events = live.subscribe();
    let new = NewMessage::validate("Zoë", "quote \" and \\ and </script> and é", None).unwrap();
    let Ok(Inserted::Created(created)) = store.insert(new).await else {
        panic!("not created");
    };
    // Answered only once published: a client that was answered finds its
    // message in the next listing.
    let listed = live.latest(1).unwrap();
    assert_eq!(listed[0].message.id, created.id);
    let event = events.try_recv().expect("broadcast before the answer");
    let stored = store.get(&created.id).await.unwrap().unwrap();
    assert_eq!(*event.message, stored);
    let json = serde_json::to_vec(&stored).unwrap();
    assert_eq!(&event.json[..], &json[..]);
    let mut frame = format!("event: message\nid: {}\ndata: ", stored.id).into_bytes();
    frame.extend_from_slice(&json);
    frame.extend_from_slice(b"\n\n");
    assert_eq!(&event.frame[..], &frame[..]);
    assert_eq!(&listed[0].json[..], &json[..]);
}
