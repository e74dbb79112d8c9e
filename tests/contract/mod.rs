//! The store contract: what every message store must do, run against each
//! store by its own test file. `open` must give a fresh, empty store each call.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use simplechat::cache::Cache;
use simplechat::message::NewMessage;
use simplechat::store::{Cursor, Inserted, Store, StoreError};

fn new(id: &str, text: &str) -> NewMessage {
    NewMessage::validate("tester", text, Some(id)).expect("valid message")
}

async fn list(store: &dyn Store, cursor: Cursor, limit: usize) -> Vec<String> {
    store
        .list(cursor, limit)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.text)
        .collect()
}

async fn insert_all(store: &dyn Store, n: usize) {
    for i in 0..n {
        let outcome = store.insert(new(&format!("m{i}"), &format!("t{i}"))).await;
        assert!(
            matches!(outcome, Ok(Inserted::Created(_))),
            "insert m{i}: {outcome:?}"
        );
    }
}

/// Runs every case; each opens its own store.
pub async fn run_all<F, Fut>(open: F)
where
    F: Fn(Arc<Cache>) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    macro_rules! case {
        ($name:ident) => {{
            eprintln!("contract: {}", stringify!($name));
            let cache = Cache::new();
            let store = open(cache.clone()).await;
            $name(&*store, &cache).await;
            store.close().await;
        }};
    }
    case!(stores_and_gets);
    case!(same_id_same_content_is_a_retry);
    case!(same_id_other_content_conflicts);
    case!(lists_latest_oldest_first);
    case!(pages_back_and_forth);
    case!(unknown_ids);
    case!(publishes_to_the_cache);
    case!(concurrent_inserts_are_all_stored);
    case!(reports_ready);
}

async fn stores_and_gets(store: &dyn Store, _: &Cache) {
    let before = simplechat::message::now_millis();
    let Ok(Inserted::Created(stored)) = store.insert(new("a1", "hello")).await else {
        panic!("first insert must create");
    };
    assert_eq!(
        (
            stored.id.as_str(),
            stored.name.as_str(),
            stored.text.as_str()
        ),
        ("a1", "tester", "hello")
    );
    assert!(stored.datetime >= before - Duration::from_secs(5));
    let got = store.get("a1").await.expect("get").expect("stored message");
    assert_eq!(got, stored);
}

async fn same_id_same_content_is_a_retry(store: &dyn Store, _: &Cache) {
    let first = store.insert(new("k1", "once")).await.expect("insert");
    let again = store.insert(new("k1", "once")).await.expect("retry");
    assert!(matches!(again, Inserted::Existing(_)), "{again:?}");
    assert_eq!(again.message(), first.message());
    assert_eq!(list(store, Cursor::Latest, 10).await, ["once"]);
}

async fn same_id_other_content_conflicts(store: &dyn Store, _: &Cache) {
    store.insert(new("k2", "original")).await.expect("insert");
    let err = store.insert(new("k2", "different")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref id) if id == "k2"),
        "{err:?}"
    );
    assert_eq!(store.get("k2").await.unwrap().unwrap().text, "original");
    assert_eq!(list(store, Cursor::Latest, 10).await, ["original"]);
}

async fn lists_latest_oldest_first(store: &dyn Store, _: &Cache) {
    assert!(list(store, Cursor::Latest, 10).await.is_empty());
    assert!(list(store, Cursor::Oldest, 10).await.is_empty());
    insert_all(store, 5).await;
    assert_eq!(list(store, Cursor::Latest, 3).await, ["t2", "t3", "t4"]);
    assert_eq!(
        list(store, Cursor::Latest, 100).await,
        ["t0", "t1", "t2", "t3", "t4"]
    );
}

async fn pages_back_and_forth(store: &dyn Store, _: &Cache) {
    insert_all(store, 7).await;
    assert_eq!(
        list(store, Cursor::Before("m4".into()), 2).await,
        ["t2", "t3"]
    );
    assert_eq!(list(store, Cursor::Before("m1".into()), 5).await, ["t0"]);
    assert!(list(store, Cursor::Before("m0".into()), 5).await.is_empty());
    assert_eq!(
        list(store, Cursor::After("m4".into()), 5).await,
        ["t5", "t6"]
    );
    assert_eq!(
        list(store, Cursor::After("m0".into()), 2).await,
        ["t1", "t2"]
    );
    assert!(list(store, Cursor::After("m6".into()), 5).await.is_empty());
    // Walking back page by page visits every message exactly once.
    let mut seen = Vec::new();
    let mut page = store.list(Cursor::Latest, 3).await.unwrap();
    while let Some(first) = page.first().cloned() {
        seen.splice(0..0, page.iter().map(|m| m.text.clone()));
        page = store.list(Cursor::Before(first.id), 3).await.unwrap();
    }
    assert_eq!(seen, (0..7).map(|i| format!("t{i}")).collect::<Vec<_>>());
    // And forwards from the oldest, exactly once, in the same order.
    let mut forwards = Vec::new();
    let mut page = store.list(Cursor::Oldest, 3).await.unwrap();
    while let Some(last) = page.last().cloned() {
        forwards.extend(page.iter().map(|m| m.text.clone()));
        page = store.list(Cursor::After(last.id), 3).await.unwrap();
    }
    assert_eq!(forwards, seen, "forwards and backwards agree");
}

async fn unknown_ids(store: &dyn Store, _: &Cache) {
    insert_all(store, 1).await;
    assert_eq!(store.get("nope").await.expect("get"), None);
    for cursor in [Cursor::Before("nope".into()), Cursor::After("nope".into())] {
        let err = store.list(cursor, 5).await.unwrap_err();
        assert!(matches!(err, StoreError::UnknownId(_)), "{err:?}");
    }
}

async fn publishes_to_the_cache(store: &dyn Store, cache: &Cache) {
    let mut rx = cache.subscribe();
    insert_all(store, 3).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("the cache delivers within 15 s")
            .expect("feed open");
        got.push(event.message.text.clone());
    }
    assert_eq!(got, ["t0", "t1", "t2"]);
    // The cache answers the latest listing with what the store holds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(events) = cache.latest(3) {
            let texts: Vec<_> = events.iter().map(|e| e.message.text.clone()).collect();
            if texts == ["t0", "t1", "t2"] {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cache never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn concurrent_inserts_are_all_stored(store: &dyn Store, _: &Cache) {
    let inserts = (0..64).map(|i| store.insert(new(&format!("c{i}"), &format!("c{i}"))));
    for outcome in futures::future::join_all(inserts).await {
        assert!(matches!(outcome, Ok(Inserted::Created(_))), "{outcome:?}");
    }
    let mut texts = list(store, Cursor::Latest, 1000).await;
    assert_eq!(texts.len(), 64);
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 64, "no message stored twice");
}

async fn reports_ready(store: &dyn Store, _: &Cache) {
    assert_eq!(store.ready().await, Ok(()));
    let status = store.status().await;
    assert!(status.ready, "{status:?}");
}
