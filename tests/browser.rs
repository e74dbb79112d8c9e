//! The page in a real browser: headless Chromium, driven over WebDriver.
//!
//! Needs `chromium` and `chromedriver` (Debian: chromium, chromium-driver).
//! Without them the test says loudly that it skipped; with
//! `SIMPLECHAT_REQUIRE_BROWSER=1` (as CI sets) their absence is a failure.

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use support::app::spawn_app;

fn find(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(chromedriver: &PathBuf) -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Owned by `Driver` at once, so it is killed and reaped on every path.
    let driver = Driver {
        child: Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on {port}");
}

async fn open_browser(driver: &Driver, chromium: &PathBuf, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=420,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("start a browser session")
}

async fn eval(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.expect("run script")
}

/// Polls `script` until it returns `true`, for at most `secs` seconds.
async fn wait_for(client: &Client, script: &str, secs: u64, what: &str) {
    for _ in 0..secs * 10 {
        if eval(client, script).await == json!(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_see_each_others_messages_live_and_markup_stays_text() {
    let required = std::env::var("SIMPLECHAT_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromium = find(
        "SIMPLECHAT_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let chromedriver = find("SIMPLECHAT_CHROMEDRIVER", &["chromedriver"]);
    let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
        assert!(
            !required,
            "SIMPLECHAT_REQUIRE_BROWSER=1 but chromium/chromedriver were not found"
        );
        // Straight to stderr: the test harness would swallow eprintln! output.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED browser test: chromium and chromedriver not found (install Debian's chromium and chromium-driver)"
        );
        return;
    };

    let app = spawn_app(&[]).await;
    app.post_message("history", "rendered by the server").await;
    let driver = start_driver(&chromedriver).await;
    let profiles = tempfile::tempdir().unwrap();
    let alice = open_browser(&driver, &chromium, &profiles.path().join("a")).await;
    let bob = open_browser(&driver, &chromium, &profiles.path().join("b")).await;

    for tab in [&alice, &bob] {
        tab.goto(&app.base_url).await.unwrap();
        wait_for(
            tab,
            "return document.getElementById('connection').dataset.state === 'live'",
            10,
            "live state",
        )
        .await;
        let history = eval(
            tab,
            "return document.querySelector('#messages .text').textContent",
        )
        .await;
        assert_eq!(history, "rendered by the server");
    }
    // Survives only if Bob's tab is never reloaded.
    eval(&bob, "window.noReload = 42; return true").await;

    let evil = "<script>window.pwned = true</script><img src=x onerror=\"window.pwned=true\"> hi";
    alice
        .find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys("Alice")
        .await
        .unwrap();
    alice
        .find(Locator::Id("text"))
        .await
        .unwrap()
        .send_keys(evil)
        .await
        .unwrap();
    alice
        .find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    wait_for(
        &bob,
        "return [...document.querySelectorAll('#messages .text')].some(e => e.textContent.includes('window.pwned'))",
        10,
        "the message in the other tab",
    )
    .await;
    let shown = eval(&bob, "const t = document.querySelectorAll('#messages .text'); return t[t.length - 1].textContent").await;
    assert_eq!(shown, evil, "shown exactly as typed, as text");
    let name = eval(&bob, "const n = document.querySelectorAll('#messages .name'); return n[n.length - 1].textContent").await;
    assert_eq!(name, "Alice");
    assert_eq!(
        eval(&bob, "return window.noReload").await,
        json!(42),
        "no reload"
    );
    for tab in [&alice, &bob] {
        assert_eq!(
            eval(tab, "return window.pwned === undefined").await,
            json!(true),
            "markup never ran"
        );
        assert_eq!(
            eval(
                tab,
                "return document.querySelectorAll('#messages img').length"
            )
            .await,
            json!(0)
        );
    }
    // Alice's tab shows her own message once, clears the box, and remembers her name.
    wait_for(
        &alice,
        "return document.getElementById('text').value === ''",
        5,
        "the text box cleared",
    )
    .await;
    assert_eq!(
        eval(
            &alice,
            "return document.querySelectorAll('#messages li').length"
        )
        .await,
        json!(2)
    );
    alice.refresh().await.unwrap();
    wait_for(
        &alice,
        "return document.getElementById('name').value === 'Alice'",
        5,
        "the remembered name",
    )
    .await;

    // Stored once, through the API the page uses.
    let list = app.get_json("/api/messages").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["text"], evil);

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    app.shutdown().await;
}
