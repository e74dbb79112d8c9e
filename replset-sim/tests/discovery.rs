use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::Client;
use replset_sim::{Cluster, ClusterOptions};

async fn client(uri: &str) -> Client {
    let uri = format!("{uri}&serverSelectionTimeoutMS=10000");
    Client::with_uri_str(&uri).await.expect("client")
}

#[tokio::test]
async fn discovery_finds_the_primary() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    assert_eq!(cluster.primary(), Some(0));
    let client = client(&cluster.uri("chat")).await;
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert_eq!(hello.get_bool("isWritablePrimary"), Ok(true));
    assert_eq!(hello.get_str("me").unwrap(), cluster.hosts()[0]);
    assert_eq!(hello.get_str("setName").unwrap(), "rs");

    let coll = client.database("chat").collection::<Document>("messages");
    coll.insert_one(doc! {"_id": "a", "name": "n", "text": "t"})
        .await
        .unwrap();
    let got = coll.find_one(doc! {"_id": "a"}).await.unwrap().unwrap();
    assert_eq!(got.get_str("text"), Ok("t"));
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
    assert_eq!(coll.estimated_document_count().await.unwrap(), 1);
    coll.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"datetime": 1, "_id": 1})
            .build(),
    )
    .await
    .unwrap();
    let names = client
        .database("chat")
        .list_collection_names()
        .await
        .unwrap();
    assert_eq!(names, ["messages"]);
}

#[test]
fn a_background_cluster_serves_synchronous_tests() {
    let cluster = Cluster::start_blocking(ClusterOptions {
        election_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .unwrap();
    assert!(std::net::TcpStream::connect(&cluster.hosts()[0]).is_ok());
    cluster.handle().block_on(cluster.kill(0));
    assert!(std::net::TcpStream::connect(&cluster.hosts()[0]).is_err());
    let p = cluster
        .handle()
        .block_on(cluster.wait_for_primary(Duration::from_secs(5)));
    assert!(matches!(p, Some(1 | 2)));
    cluster.handle().block_on(cluster.restart(0)).unwrap();
    assert!(std::net::TcpStream::connect(&cluster.hosts()[0]).is_ok());
    assert_eq!(cluster.member_state(0), "SECONDARY");
}
