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

/// A phone's viewport and a desktop window's, in CSS pixels.
const PHONE: (u32, u32) = (390, 844);
const DESKTOP: (u32, u32) = (1280, 800);

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

/// A browser window whose viewport is exactly `width` × `height` CSS pixels
/// at one device pixel per CSS pixel (Chromium's device metrics: a window
/// cannot be made narrower than 500 px); narrower than 768 px it is a
/// phone's viewport (the page's `<meta name="viewport">` applies).
async fn open_browser(
    driver: &Driver,
    chromium: &PathBuf,
    profile: &std::path::Path,
    (width, height): (u32, u32),
    settings: Settings,
) -> Client {
    let mut args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--hide-scrollbars".to_owned(),
        format!("--window-size={},{}", width.max(500), height + 200),
        format!("--user-data-dir={}", profile.display()),
    ];
    if settings.dark {
        args.push("--blink-settings=preferredColorScheme=0".to_owned());
    }
    let mut prefs = serde_json::Map::new();
    if !settings.javascript {
        prefs.insert(
            "profile.managed_default_content_settings.javascript".into(),
            json!(2),
        );
    }
    if settings.block_storage {
        prefs.insert(
            "profile.default_content_setting_values.cookies".into(),
            json!(2),
        );
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": args,
            "prefs": prefs,
            "mobileEmulation": {
                "deviceMetrics": {
                    "width": width, "height": height, "pixelRatio": 1.0,
                    "mobile": width < 768, "touch": settings.touch,
                }
            },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("start a browser session")
}

/// How the browser is set up, beyond its size.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Pages run their scripts; `false`: a reader without JavaScript.
    javascript: bool,
    /// The reader prefers a dark colour scheme.
    dark: bool,
    /// The reader blocks cookies and site data (`localStorage` throws).
    block_storage: bool,
    /// A touch screen is the pointer (`pointer: coarse`), as on a phone.
    touch: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            javascript: true,
            dark: false,
            block_storage: false,
            touch: false,
        }
    }
}

/// chromium and chromedriver, or `None` after saying loudly that the test
/// is skipped (a failure when `SIMPLECHAT_REQUIRE_BROWSER=1`).
fn browser_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var("SIMPLECHAT_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromium = find(
        "SIMPLECHAT_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let chromedriver = find("SIMPLECHAT_CHROMEDRIVER", &["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some((chromium, chromedriver)),
        _ => {
            assert!(
                !required,
                "SIMPLECHAT_REQUIRE_BROWSER=1 but chromium/chromedriver were not found"
            );
            // Straight to stderr: the test harness would swallow eprintln! output.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED browser test {test}: chromium and chromedriver not found (install Debian's chromium and chromium-driver)"
            );
            None
        }
    }
}

/// One browser with its driver and profile.
struct Browser {
    client: Client,
    size: (u32, u32),
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn open(test: &str, size: (u32, u32)) -> Option<Browser> {
        Browser::open_with(test, size, Settings::default()).await
    }

    async fn open_with(test: &str, size: (u32, u32), settings: Settings) -> Option<Browser> {
        let (chromium, chromedriver) = browser_tools(test)?;
        let driver = start_driver(&chromedriver).await;
        let profile = tempfile::tempdir().unwrap();
        let client = open_browser(&driver, &chromium, profile.path(), size, settings).await;
        Some(Browser {
            client,
            size,
            _driver: driver,
            _profile: profile,
        })
    }

    /// Loads the page and waits until it follows new messages live.
    async fn load(&self, url: &str) {
        self.load_unchecked(url).await;
        assert_eq!(
            eval(
                &self.client,
                "return [window.innerWidth, window.innerHeight]"
            )
            .await,
            json!([self.size.0, self.size.1]),
            "the viewport is the size asked for (a phone zooms out of a page wider than itself)"
        );
    }

    /// Loads the page and waits until it is live, whatever its width.
    async fn load_unchecked(&self, url: &str) {
        self.client.goto(url).await.unwrap();
        wait_for(
            &self.client,
            "return document.getElementById('connection').dataset.state === 'live'",
            20,
            "live state",
        )
        .await;
    }

    async fn close(self) {
        self.client.close().await.unwrap();
    }
}

/// Functions the page checks share, put before each script.
const PAGE_JS: &str = r#"
const $ = (s) => document.querySelector(s);
const items = () => [...document.querySelectorAll('#messages li')];
const newest = () => items()[items().length - 1];
// The bottom edge of `el` is on screen, above the form and below the
// header, and what the browser shows there is `el` itself.
function bottomShown(el) {
  const r = el.getBoundingClientRect();
  const form = $('#send').getBoundingClientRect();
  const header = $('header').getBoundingClientRect();
  const y = r.bottom - 4;
  if (!(r.bottom <= form.top + 1 && y > header.bottom && r.bottom <= window.innerHeight)) return false;
  const hit = document.elementFromPoint(r.left + r.width / 2, y);
  return hit !== null && el.contains(hit);
}
// How far the newest end of the history is below the bottom of its view
// (a column-reverse scroller counts scrollTop from its bottom, downwards).
function belowView() {
  const h = $('#history');
  return getComputedStyle(h).flexDirection === 'column-reverse'
    ? -h.scrollTop
    : h.scrollHeight - h.clientHeight - h.scrollTop;
}
"#;

async fn page_eval(client: &Client, script: &str) -> Value {
    eval(client, &format!("{PAGE_JS}\n{script}")).await
}

async fn page_wait(client: &Client, script: &str, what: &str) {
    wait_for(client, &format!("{PAGE_JS}\n{script}"), 20, what).await
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
    let test = "two_tabs";
    let Some(alice_tab) = Browser::open(test, DESKTOP).await else {
        return;
    };
    let Some(bob_tab) = Browser::open(test, PHONE).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    app.post_message("history", "rendered by the server").await;

    for tab in [&alice_tab, &bob_tab] {
        tab.load(&app.base_url).await;
        let history = eval(
            &tab.client,
            "return document.querySelector('#messages .text').textContent",
        )
        .await;
        assert_eq!(history, "rendered by the server");
    }
    let (alice, bob) = (&alice_tab.client, &bob_tab.client);
    // Survives only if Bob's tab is never reloaded.
    eval(bob, "window.noReload = 42; return true").await;

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
        bob,
        "return [...document.querySelectorAll('#messages .text')].some(e => e.textContent.includes('window.pwned'))",
        10,
        "the message in the other tab",
    )
    .await;
    let shown = eval(bob, "const t = document.querySelectorAll('#messages .text'); return t[t.length - 1].textContent").await;
    assert_eq!(shown, evil, "shown exactly as typed, as text");
    let name = eval(bob, "const n = document.querySelectorAll('#messages .name'); return n[n.length - 1].textContent").await;
    assert_eq!(name, "Alice");
    assert_eq!(
        eval(bob, "return window.noReload").await,
        json!(42),
        "no reload"
    );
    for tab in [alice, bob] {
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
        alice,
        "return document.getElementById('text').value === ''",
        5,
        "the text box cleared",
    )
    .await;
    assert_eq!(
        eval(
            alice,
            "return document.querySelectorAll('#messages li').length"
        )
        .await,
        json!(2)
    );
    alice.refresh().await.unwrap();
    wait_for(
        alice,
        "return document.getElementById('name').value === 'Alice'",
        5,
        "the remembered name",
    )
    .await;

    // Stored once, through the API the page uses.
    let list = app.get_json("/api/messages").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["text"], evil);

    alice_tab.close().await;
    bob_tab.close().await;
    app.shutdown().await;
}

/// Posts `count` messages named `name` with texts `"{prefix}{i}"` (1-based).
async fn post_many(app: &support::app::TestApp, name: &str, prefix: &str, count: usize) {
    for i in 1..=count {
        app.post_message(name, &format!("{prefix}{i}")).await;
    }
}

/// Fills the text box and presses Send, as a user does.
async fn send(client: &Client, name: &str, text: &str) {
    let name_box = client.find(Locator::Id("name")).await.unwrap();
    name_box.clear().await.unwrap();
    name_box.send_keys(name).await.unwrap();
    // Set rather than typed: a long text typed key by key is slow, and a
    // newline typed would press Enter.
    client
        .execute(
            "document.getElementById('text').value = arguments[0]; return true",
            vec![json!(text)],
        )
        .await
        .unwrap();
    client
        .find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Fault 1: your own message hid behind the sticky form, and after one long
/// message the list stopped following. Now the newest message, and your own
/// just after sending, is shown above the form; the list follows while the
/// reader is at the bottom and, scrolled up, keeps still and offers "New
/// messages" instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_message_is_shown_above_the_form_and_followed_only_at_the_bottom() {
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("follow", size).await else {
            return;
        };
        let app = spawn_app(&[]).await;
        post_many(&app, "bob", "earlier message ", 40).await;
        tab.load(&app.base_url).await;
        let c = &tab.client;
        assert_eq!(
            page_eval(c, "return bottomShown(newest()) && belowView() <= 1").await,
            json!(true),
            "{size:?}: the page opens at the newest message, above the form"
        );

        // Your own long message, then somebody else's: both followed.
        let long = "a long message that wraps over many lines ".repeat(40);
        send(c, "me", &long).await;
        page_wait(
            c,
            "return items().length === 41 && $('#text').value === ''",
            "own message",
        )
        .await;
        assert_eq!(
            page_eval(
                c,
                "return [newest().querySelector('.text').textContent, bottomShown(newest())]"
            )
            .await,
            json!([long.trim(), true]),
            "{size:?}: your own message is shown above the form"
        );
        app.post_message("bob", "right after the long one").await;
        page_wait(c, "return items().length === 42", "bob's message").await;
        assert_eq!(
            page_eval(c, "return bottomShown(newest()) && belowView() <= 1").await,
            json!(true),
            "{size:?}: the list still follows after a long message"
        );
        assert_eq!(
            page_eval(c, "return $('#new-messages').hidden").await,
            json!(true)
        );

        // Scrolled up: a new message neither moves the view nor is hidden
        // from the reader's knowledge.
        page_eval(c, "$('#history').scrollBy(0, -600); return true").await;
        page_wait(c, "return belowView() >= 500", "scrolled up").await;
        let before = page_eval(c, MARK_ANCHOR_JS).await;
        app.post_message("bob", "while you read back").await;
        page_wait(
            c,
            "return items().length === 43",
            "the message while scrolled up",
        )
        .await;
        // Within a pixel: scroll offsets snap to device pixels; a jump is a
        // message's height.
        let moved = anchor_moved(c, &before).await;
        assert!(moved < 1.0, "{size:?}: the view moved by {moved} px");
        assert_eq!(
            page_eval(
                c,
                "const b = $('#new-messages'); const r = b.getBoundingClientRect(); \
                 return !b.hidden && document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) === b \
                   && !bottomShown(newest())"
            )
            .await,
            json!(true),
            "{size:?}: 'New messages' is offered, the new one not scrolled to"
        );
        c.find(Locator::Id("new-messages"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(
            c,
            "return belowView() <= 1 && bottomShown(newest()) && $('#new-messages').hidden",
            "the newest message after 'New messages'",
        )
        .await;
        tab.close().await;
        app.shutdown().await;
    }
}

/// Fault 2: a name of 64 × `W` made the page 745 px wide on a phone. Now
/// nothing is wider than the viewport at 320 px or wider, whatever the
/// names and texts, and Send stays on screen and clickable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_overflows_sideways_whatever_the_names_and_texts() {
    let app = spawn_app(&[]).await;
    app.post_message(&"W".repeat(64), "hello from a very wide name")
        .await;
    app.post_message(&"字".repeat(64), "a wide name in another script")
        .await;
    app.post_message("ann", &"x".repeat(2000)).await;
    app.post_message(
        "url",
        &format!(
            "https://example.com/{}",
            "a-very-long-path-segment".repeat(40)
        ),
    )
    .await;
    app.post_message("hebrew", &"א".repeat(1500)).await;
    app.post_message("zed", &zalgo()).await;
    app.post_message("table", &"\t".repeat(300).replace('\t', "\tcol"))
        .await;
    for size in [(320, 640), PHONE, DESKTOP] {
        let Some(tab) = Browser::open("overflow", size).await else {
            return;
        };
        tab.load_unchecked(&app.base_url).await;
        let c = &tab.client;
        // A long name typed into the form too.
        c.find(Locator::Id("name"))
            .await
            .unwrap()
            .send_keys(&"W".repeat(64))
            .await
            .unwrap();
        let measured = page_eval(
            c,
            "const d = document.documentElement, h = $('#history');
             const send = $('#send-button').getBoundingClientRect();
             const names = [...document.querySelectorAll('.name')].map(n => n.getBoundingClientRect());
             return {
               scrollWidth: d.scrollWidth, viewport: window.innerWidth,
               historyOverflow: h.scrollWidth - h.clientWidth,
               namesInside: names.every(r => r.left >= 0 && r.right <= window.innerWidth),
               sendInside: send.left >= 0 && send.right <= window.innerWidth && send.bottom <= window.innerHeight,
               sendClickable: document.elementFromPoint(send.left + send.width / 2, send.top + send.height / 2) === $('#send-button'),
             }",
        )
        .await;
        // A phone zooms out of a page wider than itself, so the viewport
        // is compared with the screen's width too.
        assert_eq!(
            [&measured["scrollWidth"], &measured["viewport"]],
            [&json!(size.0), &json!(size.0)],
            "{size:?}: the document is no wider than the viewport: {measured}"
        );
        assert_eq!(
            measured["historyOverflow"],
            json!(0),
            "{size:?}: {measured}"
        );
        assert_eq!(measured["namesInside"], json!(true), "{size:?}: {measured}");
        assert_eq!(measured["sendInside"], json!(true), "{size:?}: {measured}");
        assert_eq!(
            measured["sendClickable"],
            json!(true),
            "{size:?}: {measured}"
        );
        tab.close().await;
    }
    app.shutdown().await;
}

/// `Z` and 1,999 combining marks: 2,000 characters, within the limit.
fn zalgo() -> String {
    // Marks above (U+0300..U+0314) and below (U+0316..U+0333) in turn, so
    // the stack grows both ways.
    let marks: Vec<char> = (0x300..=0x314)
        .chain(0x316..=0x333)
        .filter_map(char::from_u32)
        .collect();
    std::iter::once('Z')
        .chain((0..1999).map(|i| marks[i % marks.len()]))
        .collect()
}

/// Fault 5: stacked combining marks painted far outside their message box,
/// over its neighbours. The page is photographed with the message shown and
/// with it hidden: every pixel that differs lies inside its own box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_combining_marks_paint_only_inside_their_own_message() {
    let app = spawn_app(&[]).await;
    app.post_message("above", "the neighbour above").await;
    let zed = app.post_message("zed", &zalgo()).await;
    assert_eq!(zed["text"].as_str().unwrap().chars().count(), 2000);
    app.post_message("below", "the neighbour below").await;
    app.post_message("below", "and one more").await;
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("combining", size).await else {
            return;
        };
        tab.load(&app.base_url).await;
        let c = &tab.client;
        let id = zed["id"].as_str().unwrap();
        let select = format!("const z = document.getElementById('m-{id}');");
        c.execute(
            &format!("{select} z.scrollIntoView({{block: 'center'}}); return true"),
            vec![],
        )
        .await
        .unwrap();
        let shown = c.screenshot().await.unwrap();
        let rect = c
            .execute(
                &format!(
                    "{select} z.style.visibility = 'hidden'; const r = z.getBoundingClientRect();
                     return [r.left, r.top, r.right, r.bottom]"
                ),
                vec![],
            )
            .await
            .unwrap();
        let hidden = c.screenshot().await.unwrap();
        // Decoded by the browser itself: no image crate for one comparison.
        let outside = c
            .execute_async(
                "const [a, b, r, done] = arguments;
                 const decode = async (bytes) => {
                   const bitmap = await createImageBitmap(new Blob([new Uint8Array(bytes)], {type: 'image/png'}));
                   const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
                   const ctx = canvas.getContext('2d');
                   ctx.drawImage(bitmap, 0, 0);
                   return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
                 };
                 Promise.all([decode(a), decode(b)]).then(([x, y]) => {
                   let differing = 0, outside = 0, first = null;
                   for (let i = 0; i < x.data.length; i += 4) {
                     if (x.data[i] === y.data[i] && x.data[i + 1] === y.data[i + 1] && x.data[i + 2] === y.data[i + 2]) continue;
                     differing++;
                     const px = (i / 4) % x.width, py = Math.floor(i / 4 / x.width);
                     if (px < Math.floor(r[0]) || px >= Math.ceil(r[2]) || py < Math.floor(r[1]) || py >= Math.ceil(r[3])) {
                       outside++;
                       if (!first) first = [px, py];
                     }
                   }
                   done({differing, outside, first, width: x.width, height: x.height});
                 }, (e) => done({error: String(e)}));",
                vec![json!(shown), json!(hidden), rect.clone()],
            )
            .await
            .unwrap();
        assert_eq!(outside["width"], json!(size.0), "{size:?}: {outside}");
        assert!(
            outside["differing"].as_u64().unwrap() > 100,
            "{size:?}: the message was drawn at all: {outside}"
        );
        assert_eq!(
            outside["outside"],
            json!(0),
            "{size:?}: pixels painted outside the message box {rect}: {outside}"
        );
        tab.close().await;
    }
    app.shutdown().await;
}

/// Stores messages as an older version (or the lab's app) may have: with
/// names today's rules refuse. The app is then started on that directory.
async fn seed_unchecked(data_dir: &std::path::Path, messages: &[(&str, &str)]) {
    use simplechat::store::Store;
    let store = simplechat::store::embedded::EmbeddedStore::open(
        data_dir,
        Duration::from_secs(10),
        simplechat::cache::Cache::new(),
    )
    .await
    .expect("open the embedded store");
    for (name, text) in messages {
        store
            .insert(simplechat::message::NewMessage {
                id: simplechat::message::new_id(),
                name: (*name).to_owned(),
                text: (*text).to_owned(),
            })
            .await
            .expect("insert");
    }
    store.close().await;
}

/// Fault 3: a Hebrew name reordered the name/time line, a name ending in
/// U+202E drew the time after it backwards, and RTL texts were left-aligned.
/// Now each name is a `<bdi>` and each text `dir="auto"`, server-rendered
/// and live alike: the time reads left to right after the name, and an RTL
/// text starts at the right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_texts_cannot_reorder_what_is_around_them_and_rtl_reads_right_to_left() {
    let data = tempfile::tempdir().unwrap();
    // Stored before names refused bidi controls.
    seed_unchecked(
        data.path(),
        &[
            ("eve\u{202E}", "the name ends in a right-to-left override"),
            (
                "\u{2067}mallory",
                "the name opens an isolate it never closes",
            ),
            ("ann", "an override left open in a text \u{202E}abc"),
        ],
    )
    .await;
    let app = support::app::spawn_app_in(data.path(), &[]).await;
    app.post_message("עמית", "שלום לכולם, מה נשמע?").await;
    app.post_message("ann", "after the Hebrew one").await;
    // The time is checked character by character: its first character must
    // be drawn left of its last, and the name must end before it starts.
    let check = "return items().map(li => {
        const name = li.querySelector('.name'), time = li.querySelector('time'), text = li.querySelector('.text');
        const t = time.firstChild, range = document.createRange();
        range.setStart(t, 0); range.setEnd(t, 1); const first = range.getBoundingClientRect();
        range.setStart(t, t.length - 1); range.setEnd(t, t.length); const last = range.getBoundingClientRect();
        range.selectNodeContents(text); const drawn = range.getBoundingClientRect();
        const box = text.getBoundingClientRect();
        return {
          name: name.textContent,
          isolated: name.localName === 'bdi' && text.dir === 'auto',
          timeInOrder: first.left < last.left,
          nameBeforeTime: name.getBoundingClientRect().right <= first.left,
          direction: getComputedStyle(text).direction,
          startsRight: Math.abs(drawn.right - box.right) < 1,
          startsLeft: Math.abs(drawn.left - box.left) < 1,
        };
      })";
    for (round, size) in [PHONE, DESKTOP].into_iter().enumerate() {
        let Some(tab) = Browser::open("bidi", size).await else {
            return;
        };
        tab.load(&app.base_url).await;
        let c = &tab.client;
        // And the same through the live path (rendered by the script).
        app.post_message("דנה", "הודעה חיה").await;
        page_wait(
            c,
            &format!("return items().length === {}", 6 + round),
            "the live message",
        )
        .await;
        let shown = page_eval(c, check).await;
        for (i, item) in shown.as_array().unwrap().iter().enumerate() {
            let rtl = i == 3 || i >= 5;
            assert_eq!(
                [
                    &item["isolated"],
                    &item["timeInOrder"],
                    &item["nameBeforeTime"],
                    &item["direction"],
                    &item[if rtl { "startsRight" } else { "startsLeft" }],
                ],
                [
                    &json!(true),
                    &json!(true),
                    &json!(true),
                    &json!(if rtl { "rtl" } else { "ltr" }),
                    &json!(true)
                ],
                "{size:?}: {item}"
            );
        }
        tab.close().await;
    }
    app.shutdown().await;
}

/// Fault 7 with JavaScript: "Older messages" prepends the page before in
/// place and the message the reader was looking at stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_messages_are_prepended_in_place_keeping_the_view() {
    let app = spawn_app(&[]).await;
    post_many(&app, "ann", "message ", 250).await;
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("older", size).await else {
            return;
        };
        tab.load(&app.base_url).await;
        let c = &tab.client;
        let texts = SHOWN_TEXTS;
        let expect = |from: usize| -> Value {
            json!((from..=250)
                .map(|i| format!("message {i}"))
                .collect::<Vec<_>>())
        };
        assert_eq!(page_eval(c, texts).await, expect(151));
        for (from, more) in [(51, true), (1, false)] {
            let before = page_eval(
                c,
                "$('#older').scrollIntoView(); const h = $('#history').getBoundingClientRect().top;
                 window.anchorItem = items().find(li => li.getBoundingClientRect().bottom > h);
                 return window.anchorItem.getBoundingClientRect().top",
            )
            .await;
            c.find(Locator::Id("older"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            page_wait(
                c,
                &format!("return items().length === {}", 251 - from),
                "older messages",
            )
            .await;
            assert_eq!(page_eval(c, texts).await, expect(from), "{size:?}");
            let after = page_eval(c, "return window.anchorItem.getBoundingClientRect().top").await;
            assert!(
                (after.as_f64().unwrap() - before.as_f64().unwrap()).abs() < 1.0,
                "{size:?}: the view moved from {before} to {after}"
            );
            assert_eq!(
                page_eval(
                    c,
                    "const a = $('#older'); return !!a && a.getAttribute('href') === '/?before=' + items()[0].dataset.id"
                )
                .await,
                json!(more),
                "{size:?}: the link goes on from the oldest shown, and goes when there is no more"
            );
        }
        // Still live at the end of it.
        assert_eq!(
            page_eval(c, "return location.pathname + location.search").await,
            json!("/")
        );
        tab.close().await;
    }
    app.shutdown().await;
}

/// Where the first message in view is, kept in `window.anchorItem`.
const MARK_ANCHOR_JS: &str = "const h = $('#history').getBoundingClientRect().top; \
     window.anchorItem = items().find(li => li.getBoundingClientRect().bottom > h); \
     return window.anchorItem.getBoundingClientRect().top";

/// How far the message marked by [`MARK_ANCHOR_JS`] has moved since.
async fn anchor_moved(c: &Client, before: &Value) -> f64 {
    let after = page_eval(c, "return window.anchorItem.getBoundingClientRect().top").await;
    (after.as_f64().unwrap() - before.as_f64().unwrap()).abs()
}

/// Reading back while others post: the message being read stays where it
/// is however many come (it crept up a third of a pixel a message, 17 px
/// for 60, as each put-back snapped to whole pixels), and so it does when
/// an error line comes into the form (it jumped by the line's height).
/// A failed load of older messages says so, and the next that succeeds
/// takes the error back (it stayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_back_the_view_stays_put_through_many_messages_and_an_error() {
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("stays_put", size).await else {
            return;
        };
        let app = spawn_app(&[]).await;
        post_many(&app, "ann", "earlier ", 150).await;
        tab.load(&app.base_url).await;
        let c = &tab.client;
        page_eval(c, "$('#history').scrollBy(0, -1200); return true").await;
        page_wait(c, "return belowView() >= 1000", "scrolled up").await;
        let before = page_eval(c, MARK_ANCHOR_JS).await;
        for n in 0..60 {
            app.post_message("bob", &format!("while you read back {n}"))
                .await;
        }
        page_wait(c, "return items().length === 160", "the 60 messages").await;
        let moved = anchor_moved(c, &before).await;
        assert!(moved < 1.0, "{size:?}: moved {moved} px over 60 messages");

        let before = page_eval(c, MARK_ANCHOR_JS).await;
        c.find(Locator::Id("name"))
            .await
            .unwrap()
            .send_keys("me")
            .await
            .unwrap();
        // Blank, which the browser's own check lets through.
        c.find(Locator::Id("text"))
            .await
            .unwrap()
            .send_keys("   ")
            .await
            .unwrap();
        c.find(Locator::Id("send-button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(c, "return !$('#error').hidden", "the error line").await;
        let moved = anchor_moved(c, &before).await;
        assert!(moved < 1.0, "{size:?}: moved {moved} px by the error line");

        // The text box grows with each line typed, and shrinks as they go:
        // the message being read stays where it is (it moved by the box's
        // growth, 95 px for five lines at phone width).
        let before = page_eval(c, MARK_ANCHOR_JS).await;
        let text = c.find(Locator::Id("text")).await.unwrap();
        for line in 0..5 {
            text.send_keys(&format!("\u{E008}\u{E007}\u{E008}line {line}"))
                .await
                .unwrap();
        }
        let grown = page_eval(c, "return $('#text').getBoundingClientRect().height").await;
        assert!(
            grown.as_f64().unwrap() > 80.0,
            "{size:?}: the box grew: {grown}"
        );
        let moved = anchor_moved(c, &before).await;
        assert!(moved < 1.0, "{size:?}: moved {moved} px as the box grew");
        for _ in 0..5 * "line 0".len() + 5 {
            text.send_keys("\u{E003}").await.unwrap();
        }
        let moved = anchor_moved(c, &before).await;
        assert!(moved < 1.0, "{size:?}: moved {moved} px as the box shrank");

        // The first load of older messages fails as a dropped connection
        // does; the second succeeds.
        page_eval(
            c,
            "const send = window.fetch; let failed = false;
             window.fetch = (url, options) => {
               if (!failed && String(url).includes('before=')) {
                 failed = true;
                 return Promise.reject(new TypeError('Failed to fetch'));
               }
               return send(url, options);
             };
             return true",
        )
        .await;
        for _ in 0..2 {
            page_eval(c, "$('#older').scrollIntoView(); return true").await;
            c.find(Locator::Id("older"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            if page_eval(c, "return $('#error').textContent").await
                == json!("Could not reach the server to load older messages.")
            {
                break;
            }
        }
        page_wait(
            c,
            "return $('#error').textContent === 'Could not reach the server to load older messages.'",
            "the failed load said",
        )
        .await;
        c.find(Locator::Id("older"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(c, "return items().length === 210", "the older messages").await;
        assert_eq!(
            page_eval(c, "return $('#error').hidden").await,
            json!(true),
            "{size:?}: the error taken back"
        );
        tab.close().await;
        app.shutdown().await;
    }
}

/// How many messages the bounded-page tests let the page keep: the
/// smallest bound the page takes (two pages of 100), set on the history's
/// `data-keep` once the page has loaded, so that a few hundred posts go
/// over it; the page's own bound is larger.
const KEEP: usize = 200;

/// Sets the page's bound to [`KEEP`] messages (its `data-keep` seam), so
/// the tests post hundreds of messages, not thousands.
async fn keep_at_most_the_tests_bound(client: &Client) {
    page_eval(
        client,
        &format!("$('#history').dataset.keep = '{KEEP}'; return true"),
    )
    .await;
}

/// Posts messages named `name` with texts `"message {i}"` for each `i` in
/// `numbers`, in order.
async fn post_numbered(
    app: &support::app::TestApp,
    name: &str,
    numbers: std::ops::RangeInclusive<usize>,
) {
    for i in numbers {
        app.post_message(name, &format!("message {i}")).await;
    }
}

/// The numbers of the shown messages' texts (`"message {i}"`), oldest first.
/// The script that gives the texts of the messages the page shows, in
/// order.
const SHOWN_TEXTS: &str = "return items().map(li => li.querySelector('.text').textContent)";

/// The texts of the messages the page shows, in order, as a JSON array.
async fn shown_texts(client: &Client) -> Value {
    page_eval(client, SHOWN_TEXTS).await
}

async fn shown_numbers(client: &Client) -> Vec<usize> {
    let texts = shown_texts(client).await;
    texts
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let t = t.as_str().unwrap();
            t.strip_prefix("message ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a numbered message: {t:?}"))
        })
        .collect()
}

/// The first and last of `shown`, consecutive numbers, and how many they are.
fn span(shown: &[usize]) -> (usize, usize, usize) {
    assert!(
        shown.windows(2).all(|w| w[1] == w[0] + 1),
        "the page shows consecutive messages, each once: {shown:?}"
    );
    (shown[0], shown[shown.len() - 1], shown.len())
}

/// Clicks "Older messages" (`control` "older") or "Newer messages"
/// ("newer") and waits until it has loaded: the messages shown changed, or
/// the control went. The message in view must stay where it was.
async fn click_keeping_the_view(client: &Client, size: (u32, u32), control: &str) {
    let before = page_eval(
        client,
        &format!(
            "$('#{control}').scrollIntoView(); const h = $('#history').getBoundingClientRect().top;
             window.anchorItem = items().find(li => li.getBoundingClientRect().bottom > h);
             window.ends = items()[0].dataset.id + ' ' + newest().dataset.id;
             return window.anchorItem.getBoundingClientRect().top"
        ),
    )
    .await;
    client
        .find(Locator::Id(control))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page_wait(
        client,
        &format!(
            "return !$('#{control}[data-loading]') \
             && (!$('#{control}') || items()[0].dataset.id + ' ' + newest().dataset.id !== window.ends)"
        ),
        control,
    )
    .await;
    let after = page_eval(
        client,
        "return window.anchorItem.isConnected && window.anchorItem.getBoundingClientRect().top",
    )
    .await;
    assert!(
        after
            .as_f64()
            .is_some_and(|a| (a - before.as_f64().unwrap()).abs() < 1.0),
        "{size:?}: the view moved from {before} to {after} ({control})"
    );
}

/// A page left open all day in a busy room kept every live message: the
/// document, the browser's memory and the cost of layout grew without
/// bound. The page now keeps a bounded number of messages: while the
/// reader follows the newest, the oldest are dropped, and "Older
/// messages" brings them back as for a freshly loaded page, so walking
/// back still shows every message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_open_all_day_keeps_a_bounded_history_and_walks_back_to_every_message() {
    const TOTAL: usize = 2 * KEEP + 50;
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("bounded", size).await else {
            return;
        };
        let app = spawn_app(&[]).await;
        post_numbered(&app, "ann", 1..=50).await;
        tab.load(&app.base_url).await;
        let c = &tab.client;
        keep_at_most_the_tests_bound(c).await;

        // A busy room: many more messages than the page keeps, live.
        post_numbered(&app, "bob", 51..=TOTAL).await;
        page_wait(
            c,
            &format!("return newest().querySelector('.text').textContent === 'message {TOTAL}'"),
            "the last live message",
        )
        .await;
        let shown = shown_numbers(c).await;
        assert!(
            shown.len() <= KEEP,
            "{size:?}: the page holds {} messages, more than the {KEEP} it keeps",
            shown.len()
        );
        assert_eq!(
            shown,
            (TOTAL - KEEP + 1..=TOTAL).collect::<Vec<_>>(),
            "{size:?}: the newest {KEEP} messages are kept, the oldest dropped"
        );
        assert_eq!(
            page_eval(
                c,
                "return [bottomShown(newest()) && belowView() <= 1, \
                 $('#older').getAttribute('href') === '/?before=' + items()[0].dataset.id, \
                 $('#connection').dataset.state]"
            )
            .await,
            json!([true, true, "live"]),
            "{size:?}: still following, live, and 'Older messages' goes on from the oldest kept"
        );

        // Walking back brings every dropped message back, once, in order.
        let mut seen: Vec<usize> = shown_numbers(c).await;
        while page_eval(c, "return !!$('#older')").await == json!(true) {
            click_keeping_the_view(c, size, "older").await;
            let shown = shown_numbers(c).await;
            span(&shown);
            assert!(
                shown.len() <= KEEP,
                "{size:?}: walking back, the page holds {} messages, more than the {KEEP} it keeps",
                shown.len()
            );
            assert_eq!(
                shown[0] + 100.min(seen[0] - 1),
                seen[0],
                "{size:?}: a page of 100 before the oldest shown"
            );
            seen.splice(0..0, shown[..seen[0] - shown[0]].iter().copied());
        }
        assert_eq!(
            seen,
            (1..=TOTAL).collect::<Vec<_>>(),
            "{size:?}: every message once, in order"
        );
        tab.close().await;
        app.shutdown().await;
    }
}

/// Reading back with the page full, nothing above the view may go: live
/// messages and pages of older ones would otherwise grow the page again,
/// or take away what the reader is about to read. The newest end gives way
/// instead: live messages are no longer added below (they are still
/// announced, and "New messages" offered), and older pages drop the newest
/// messages below the view. "Newer messages" at the bottom brings those
/// back, page by page, each message once and in order, up to the live end,
/// and "New messages" goes straight to the latest, followed live again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_back_keeps_the_view_and_newer_messages_walk_forward_to_the_live_end() {
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("reading_back", size).await else {
            return;
        };
        let app = spawn_app(&[]).await;
        post_numbered(&app, "ann", 1..=320).await;
        tab.load(&app.base_url).await;
        let c = &tab.client;
        keep_at_most_the_tests_bound(c).await;
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(span(&shown_numbers(c).await), (121, 320, KEEP));
        // Long enough for the first stream's replay, which is part of the
        // page load and announced by nobody, to have settled.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // Full and reading back: live messages keep still what is shown.
        let before = page_eval(
            c,
            "const h = $('#history').getBoundingClientRect().top;
             window.anchorItem = items().find(li => li.getBoundingClientRect().bottom > h);
             return window.anchorItem.getBoundingClientRect().top",
        )
        .await;
        post_numbered(&app, "bob", 321..=325).await;
        page_wait(
            c,
            &format!("{ANNOUNCED_JS}.includes('bob: message 325')"),
            "the live messages announced",
        )
        .await;
        assert_eq!(
            span(&shown_numbers(c).await),
            (121, 320, KEEP),
            "{size:?}: nothing dropped above the view, nothing added past the bound \
             (the first, last and count of the messages shown)"
        );
        let after = page_eval(c, "return window.anchorItem.getBoundingClientRect().top").await;
        assert!(
            (after.as_f64().unwrap() - before.as_f64().unwrap()).abs() < 1.0,
            "{size:?}: the view moved from {before} to {after}"
        );
        assert_eq!(
            page_eval(
                c,
                "return [!$('#new-messages').hidden, !!$('#newer'), $('#connection').dataset.state]"
            )
            .await,
            json!([true, true, "live"]),
            "{size:?}: 'New messages' offered, 'Newer messages' at the bottom, still live"
        );

        // Older pages: the newest messages below the view give way.
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(
            span(&shown_numbers(c).await),
            (21, 220, KEEP),
            "{size:?}: a page older, the newest page below the view dropped"
        );
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(span(&shown_numbers(c).await), (1, KEEP, KEEP));
        assert_eq!(page_eval(c, "return !!$('#older')").await, json!(false));

        // Forward again, a page at a time, the oldest above the view
        // giving way.
        click_keeping_the_view(c, size, "newer").await;
        assert_eq!(span(&shown_numbers(c).await), (101, 300, KEEP));
        // The last page, with a message the stream brings while it is on
        // its way: the answer is held until the message was announced.
        page_eval(
            c,
            "const send = window.fetch;
             window.fetch = async (url, options) => {
               const response = await send(url, options);
               if (String(url).includes('after=')) {
                 while (![...$('#announcer').children].some((e) => e.textContent === 'bob: message 326')) {
                   await new Promise((r) => setTimeout(r, 50));
                 }
               }
               return response;
             };
             return true",
        )
        .await;
        tokio::join!(click_keeping_the_view(c, size, "newer"), async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            app.post_message("bob", "message 326").await;
        });
        assert_eq!(
            span(&shown_numbers(c).await),
            (127, 326, KEEP),
            "{size:?}: up to the live end, the message brought meanwhile after the page"
        );
        assert_eq!(
            page_eval(
                c,
                "return [!!$('#newer'), $('#older').getAttribute('href') === '/?before=' + items()[0].dataset.id]"
            )
            .await,
            json!([false, true]),
            "{size:?}: no more newer; 'Older messages' goes on from the oldest kept"
        );

        // At the live end again: "New messages" goes down to it, and the
        // page follows the next live message there.
        c.find(Locator::Id("new-messages"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(
            c,
            "return $('#new-messages').hidden && belowView() <= 1 && bottomShown(newest())",
            "the newest message",
        )
        .await;
        app.post_message("bob", "message 327").await;
        page_wait(
            c,
            "return newest().querySelector('.text').textContent === 'message 327' \
             && bottomShown(newest()) && belowView() <= 1",
            "the next live message, followed",
        )
        .await;
        assert_eq!(span(&shown_numbers(c).await), (128, 327, KEEP));

        // Behind again, "New messages" goes to the latest messages, and
        // the page follows them live.
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(span(&shown_numbers(c).await), (28, 227, KEEP));
        app.post_message("bob", "message 328").await;
        page_wait(c, "return !$('#new-messages').hidden", "'New messages'").await;
        c.find(Locator::Id("new-messages"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(
            c,
            "return !$('#newer') && $('#new-messages').hidden && belowView() <= 1 \
             && newest().querySelector('.text').textContent === 'message 328' && bottomShown(newest())",
            "the latest messages",
        )
        .await;
        assert_eq!(span(&shown_numbers(c).await), (229, 328, 100));

        // Sending while behind: the latest, with the message sent.
        click_keeping_the_view(c, size, "older").await;
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(span(&shown_numbers(c).await), (29, 228, KEEP));
        send(c, "me", "message 329").await;
        page_wait(
            c,
            "return !$('#newer') && newest().querySelector('.text').textContent === 'message 329' \
             && bottomShown(newest()) && belowView() <= 1",
            "the latest with the message sent",
        )
        .await;
        assert_eq!(span(&shown_numbers(c).await), (230, 329, 100));
        app.post_message("bob", "message 330").await;
        page_wait(
            c,
            "return newest().querySelector('.text').textContent === 'message 330' \
             && bottomShown(newest())",
            "live after sending",
        )
        .await;
        tab.close().await;
        app.shutdown().await;
    }
}

/// The text of the reader's own message kept below "Newer messages", or
/// `null` when there is none; whether its bottom is shown once the history
/// is scrolled to its end; and how many copies of it the document holds.
const SENT_JS: &str = "
const kept = $('#sent li');
if (!kept) return null;
const h = $('#history');
h.scrollTop = h.scrollHeight;
const text = kept.querySelector('.text').textContent;
const copies = [...document.querySelectorAll('li .text')].filter((t) => t.textContent === text).length;
return [text, bottomShown(kept), copies];
";

/// The page gives way at its newest end while the reader reads back. If
/// it did so between the answer to a send (201) and the event stream
/// bringing that message back, the reader's own message left the document
/// until "Newer messages" or "New messages" brought it back: a user who had
/// just sent a message no longer saw it. The window is forced by holding
/// the event stream back (the message cannot be brought back until it is
/// let through). The reader's own message now stays shown, below "Newer
/// messages", and once the history reaches it, it is shown in its place,
/// once. So is a message sent while behind when the latest messages, which
/// such a send goes to, cannot be loaded: it was not shown at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn your_own_message_stays_shown_when_the_page_gives_way_before_the_stream_brings_it() {
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("own_kept", size).await else {
            return;
        };
        let app = spawn_app(&[]).await;
        post_numbered(&app, "ann", 1..=320).await;
        let gate = StreamGate::start(&app.base_url).await;
        tab.load(&gate.url).await;
        let c = &tab.client;
        keep_at_most_the_tests_bound(c).await;

        // Sent while the stream is held: shown, not yet brought back.
        gate.cut_and_hold();
        page_wait(
            c,
            "return $('#connection').dataset.state === 'reconnecting'",
            "the stream dropped",
        )
        .await;
        send(c, "me", "message 321").await;
        page_wait(
            c,
            "return $('#text').value === '' && newest().querySelector('.text').textContent === 'message 321'",
            "my message shown",
        )
        .await;
        // Reading back: two pages of older messages go past the bound, and
        // the newest end, my message with it, gives way.
        click_keeping_the_view(c, size, "older").await;
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(span(&shown_numbers(c).await), (21, 220, KEEP));
        assert_eq!(
            page_eval(c, "return !!$('#newer')").await,
            json!(true),
            "{size:?}: behind, 'Newer messages' at the bottom"
        );
        assert_eq!(
            page_eval(c, SENT_JS).await,
            json!(["message 321", true, 1]),
            "{size:?}: my message still shown, once, at the bottom"
        );

        // The stream brings it back; "Newer messages" walks to the live
        // end, where it is shown once, in its place.
        gate.open();
        page_wait(
            c,
            "return $('#connection').dataset.state === 'live' && !$('#sent [data-unconfirmed]')",
            "my message brought back",
        )
        .await;
        assert_eq!(
            page_eval(c, SENT_JS).await.get(0),
            Some(&json!("message 321"))
        );
        click_keeping_the_view(c, size, "newer").await;
        assert_eq!(span(&shown_numbers(c).await), (121, 320, KEEP));
        // The last page, my message alone, is shorter than the link and
        // the copy it replaces: the view settles at the end.
        c.find(Locator::Id("newer"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(c, "return !$('#newer')", "the live end").await;
        assert_eq!(span(&shown_numbers(c).await), (122, 321, KEEP));
        assert_eq!(page_eval(c, SENT_JS).await, Value::Null);

        // Again, the page giving way for a live message while scrolled
        // up: bob's, stored before mine, comes first when the stream is
        // let through.
        gate.cut_and_hold();
        page_wait(
            c,
            "return $('#connection').dataset.state === 'reconnecting'",
            "the stream dropped",
        )
        .await;
        app.post_message("bob", "message 322").await;
        send(c, "me", "message 323").await;
        page_wait(
            c,
            "return $('#text').value === '' && newest().querySelector('.text').textContent === 'message 323'",
            "my second message shown",
        )
        .await;
        page_eval(c, "items()[0].scrollIntoView(); return true").await;
        gate.open();
        page_wait(
            c,
            "return $('#connection').dataset.state === 'live' && !!$('#newer') \
             && !$('#sent [data-unconfirmed]') && !$('#new-messages').hidden",
            "the page behind, my message brought back",
        )
        .await;
        assert_eq!(
            page_eval(c, SENT_JS).await,
            json!(["message 323", true, 1]),
            "{size:?}: my message still shown, once, at the bottom"
        );
        c.find(Locator::Id("new-messages"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(
            c,
            "return !$('#newer') && newest().querySelector('.text').textContent === 'message 323' \
             && bottomShown(newest()) && belowView() <= 1",
            "the latest messages",
        )
        .await;
        assert_eq!(span(&shown_numbers(c).await), (224, 323, 100));
        assert_eq!(page_eval(c, SENT_JS).await, Value::Null);

        // Sent while behind, and the latest messages, which a send while
        // behind goes to, cannot be loaded (the network failing just for
        // that): the message is shown below "Newer messages" all the same.
        click_keeping_the_view(c, size, "older").await;
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(page_eval(c, "return !!$('#newer')").await, json!(true));
        page_eval(
            c,
            "const send = window.fetch;
             window.fetch = (url, options) => {
               if (String(url).startsWith('/api/messages?limit=') && !String(url).includes('before=')
                   && !String(url).includes('after=')) {
                 window.fetch = send;
                 return Promise.reject(new TypeError('Failed to fetch'));
               }
               return send(url, options);
             };
             return true",
        )
        .await;
        send(c, "me", "message 324").await;
        page_wait(
            c,
            "return $('#text').value === '' && !$('#error').hidden && !!$('#sent li')",
            "my message sent, the latest not loaded",
        )
        .await;
        assert_eq!(
            page_eval(c, SENT_JS).await,
            json!(["message 324", true, 1]),
            "{size:?}: my message shown, once, at the bottom"
        );
        assert_eq!(
            page_eval(c, "return !$('#new-messages').hidden").await,
            json!(true),
            "{size:?}: 'New messages' still goes to the latest"
        );
        c.find(Locator::Id("new-messages"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(
            c,
            "return !$('#newer') && newest().querySelector('.text').textContent === 'message 324' \
             && bottomShown(newest())",
            "the latest messages",
        )
        .await;
        assert_eq!(span(&shown_numbers(c).await), (225, 324, 100));
        assert_eq!(page_eval(c, SENT_JS).await, Value::Null);
        tab.close().await;
        drop(gate);
        app.shutdown().await;
    }
}

/// Sending while the page is behind loads the latest messages, and they
/// include the message just sent; the page rebuilt it from them without
/// its mark as the reader's own, not yet brought back by the event stream.
/// Reading back then, the page gave way at its newest end and took the
/// message out of view, though the stream had still not brought it. (A
/// `reset`'s reload of the latest rebuilt it the same way.) The window is
/// forced by holding the event stream back. The message now keeps its
/// mark in its place among the latest, and stays shown below "Newer
/// messages" when the page gives way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn your_own_message_stays_shown_when_the_latest_are_loaded_before_the_stream_brings_it() {
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("own_kept_latest", size).await else {
            return;
        };
        let app = spawn_app(&[]).await;
        post_numbered(&app, "ann", 1..=320).await;
        let gate = StreamGate::start(&app.base_url).await;
        tab.load(&gate.url).await;
        let c = &tab.client;
        keep_at_most_the_tests_bound(c).await;
        click_keeping_the_view(c, size, "older").await;
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(span(&shown_numbers(c).await), (21, 220, KEEP));

        // Sent while behind, with the stream held: the latest, with it.
        gate.cut_and_hold();
        page_wait(
            c,
            "return $('#connection').dataset.state === 'reconnecting'",
            "the stream dropped",
        )
        .await;
        send(c, "me", "message 321").await;
        page_wait(
            c,
            "return $('#text').value === '' && !$('#newer') \
             && newest().querySelector('.text').textContent === 'message 321'",
            "the latest with my message",
        )
        .await;
        assert_eq!(span(&shown_numbers(c).await), (222, 321, 100));

        // Reading back: the newest end gives way, my message with it
        // unless it is still known as mine.
        click_keeping_the_view(c, size, "older").await;
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(span(&shown_numbers(c).await), (22, 221, KEEP));
        assert_eq!(
            page_eval(c, SENT_JS).await,
            json!(["message 321", true, 1]),
            "{size:?}: my message still shown, once, at the bottom"
        );

        // The stream brings it back; walking forward shows it in its
        // place, once.
        gate.open();
        page_wait(
            c,
            "return $('#connection').dataset.state === 'live' && !$('#sent [data-unconfirmed]')",
            "my message brought back",
        )
        .await;
        click_keeping_the_view(c, size, "newer").await;
        c.find(Locator::Id("newer"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(c, "return !$('#newer')", "the live end").await;
        assert_eq!(span(&shown_numbers(c).await), (122, 321, KEEP));
        assert_eq!(page_eval(c, SENT_JS).await, Value::Null);
        tab.close().await;
        drop(gate);
        app.shutdown().await;
    }
}

/// "Older messages" is a link to a page of older history, and "Newer
/// messages" one to the latest; opened in a new tab (Ctrl+click) they
/// loaded in place instead, and no tab opened. A click with a modifier is
/// now left to the browser: the page stays as it was, and the new tab
/// shows the page the link names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_opened_in_a_new_tab_opens_there() {
    use fantoccini::actions::{
        InputSource, KeyAction, KeyActions, MouseActions, PointerAction, MOUSE_BUTTON_LEFT,
    };
    use fantoccini::key::Key;

    let Some(tab) = Browser::open("new_tab", DESKTOP).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    post_many(&app, "ann", "message ", 150).await;
    tab.load(&app.base_url).await;
    let c = &tab.client;
    page_eval(c, "$('#older').scrollIntoView(); return true").await;
    let older = c.find(Locator::Id("older")).await.unwrap();
    // Ctrl held down over the click: each sequence's actions run tick by
    // tick, side by side.
    let keys = KeyActions::new("keyboard".to_owned())
        .then(KeyAction::Down {
            value: Key::Control.into(),
        })
        .then(KeyAction::Pause {
            duration: Duration::ZERO,
        })
        .then(KeyAction::Pause {
            duration: Duration::ZERO,
        })
        .then(KeyAction::Up {
            value: Key::Control.into(),
        });
    let mouse = MouseActions::new("mouse".to_owned())
        .then(PointerAction::MoveToElement {
            element: older,
            duration: None,
            x: 0.0,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    c.perform_actions(fantoccini::actions::Actions::from(keys).and(mouse))
        .await
        .unwrap();
    let mut opened = Vec::new();
    for _ in 0..100 {
        opened = c.windows().await.unwrap();
        if opened.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(opened.len(), 2, "a new tab opened");
    assert_eq!(
        page_eval(c, "return [items().length, !!$('#older[data-loading]')]").await,
        json!([100, false]),
        "this page left as it was"
    );
    let here = c.window().await.unwrap();
    let new_tab = opened.into_iter().find(|w| *w != here).unwrap();
    c.switch_to_window(new_tab).await.unwrap();
    page_wait(
        c,
        "return location.search.startsWith('?before=') && items().length === 50 \
         && items()[0].querySelector('.text').textContent === 'message 1'",
        "the older page in the new tab",
    )
    .await;
    tab.close().await;
    app.shutdown().await;
}

/// A page of older history is a page to read: not followed live, with a way
/// back to the latest, and sending from it goes back to the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_older_history_links_back_and_sends_by_the_form() {
    let app = spawn_app(&[]).await;
    post_many(&app, "ann", "message ", 120).await;
    let Some(tab) = Browser::open("paged", PHONE).await else {
        return;
    };
    let c = &tab.client;
    let latest = app.get_json("/api/messages?limit=1").await;
    let page = format!(
        "{}/?before={}",
        app.base_url,
        latest[0]["id"].as_str().unwrap()
    );
    c.goto(&page).await.unwrap();
    assert_eq!(
        page_eval(
            c,
            "return [items().length, $('#connection').dataset.state, !!$('#latest'), !!$('#older')]"
        )
        .await,
        json!([100, "paged", true, true])
    );
    send(c, "me", "sent from an old page").await;
    page_wait(
        c,
        "return location.pathname === '/' && location.search === '' && items().length === 100 \
         && newest().querySelector('.text').textContent === 'sent from an old page' && bottomShown(newest())",
        "the latest messages with the one sent",
    )
    .await;
    tab.close().await;
    app.shutdown().await;
}

/// The name box is filled with the name sent last, whichever way: the
/// form of a page of older history (its cookie) or JavaScript (kept in the
/// browser). The cookie of an earlier form post won over a later name sent
/// with JavaScript, for as long as the cookie lasted (a year), and the next
/// message went out under the old name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_sent_last_is_filled_in_whichever_way_it_was_sent() {
    let app = spawn_app(&[]).await;
    let first = app.post_message("ann", "the first").await;
    let Some(tab) = Browser::open("name_sent_last", DESKTOP).await else {
        return;
    };
    let c = &tab.client;
    let older_page = format!("{}/?before={}", app.base_url, first["id"].as_str().unwrap());
    let name_box = "return document.getElementById('name').value";
    c.goto(&older_page).await.unwrap();
    send(c, "carol", "by the form").await;
    page_wait(
        c,
        "return location.search === '' && items().length === 2",
        "back on the latest page",
    )
    .await;
    assert_eq!(page_eval(c, name_box).await, json!("carol"));
    send(c, "bob", "with javascript").await;
    page_wait(c, "return items().length === 3", "bob's message shown").await;
    tab.load(&app.base_url).await;
    assert_eq!(
        page_eval(c, name_box).await,
        json!("bob"),
        "the name sent last, with JavaScript, not the form's cookie"
    );
    c.goto(&older_page).await.unwrap();
    send(c, "dave", "by the form again").await;
    page_wait(
        c,
        "return location.search === '' && items().length === 4",
        "back on the latest page",
    )
    .await;
    assert_eq!(
        page_eval(c, name_box).await,
        json!("dave"),
        "the name sent last, by the form"
    );
    tab.close().await;
    app.shutdown().await;
}

/// A page of older history (`/?before=<id>`) loads older messages in place
/// too: it keeps the same bound, the newest end giving way, and "Newer
/// messages" walks forward again, past the page's own end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_older_history_keeps_the_same_bound() {
    for size in [PHONE, DESKTOP] {
        let app = spawn_app(&[]).await;
        post_numbered(&app, "ann", 1..=330).await;
        let Some(tab) = Browser::open("paged_bound", size).await else {
            return;
        };
        let c = &tab.client;
        let latest = app.get_json("/api/messages?limit=1").await;
        c.goto(&format!(
            "{}/?before={}",
            app.base_url,
            latest[0]["id"].as_str().unwrap()
        ))
        .await
        .unwrap();
        keep_at_most_the_tests_bound(c).await;
        assert_eq!(span(&shown_numbers(c).await), (230, 329, 100));
        click_keeping_the_view(c, size, "older").await;
        click_keeping_the_view(c, size, "older").await;
        assert_eq!(
            span(&shown_numbers(c).await),
            (30, 229, KEEP),
            "{size:?}: the newest page below the view dropped"
        );
        assert_eq!(
            page_eval(
                c,
                "return [$('#connection').dataset.state, !!$('#newer'), \
                 $('#newer').parentElement.nextElementSibling === $('#latest').parentElement]"
            )
            .await,
            json!(["paged", true, true]),
            "{size:?}: 'Newer messages' above 'Latest messages'"
        );
        click_keeping_the_view(c, size, "newer").await;
        assert_eq!(span(&shown_numbers(c).await), (130, 329, KEEP));
        // Enough past the page's own end to fill the place of the link
        // (were it less, the view could only settle at the end).
        post_numbered(&app, "bob", 331..=340).await;
        click_keeping_the_view(c, size, "newer").await;
        assert_eq!(
            span(&shown_numbers(c).await),
            (141, 340, KEEP),
            "{size:?}: forward past the page's own end, to the newest"
        );
        assert_eq!(
            page_eval(c, "return [!!$('#newer'), !!$('#latest')]").await,
            json!([false, true])
        );
        tab.close().await;
        app.shutdown().await;
    }
}

/// Fault 8: on a phone the form took a quarter of the screen. Now it is one
/// slim row for the name and one for the text and Send, and the text box
/// grows with what is typed, up to a third of the screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_is_compact_on_a_phone_and_the_text_box_grows() {
    let app = spawn_app(&[]).await;
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("form", size).await else {
            return;
        };
        tab.load(&app.base_url).await;
        let c = &tab.client;
        let height = "return [$('#send').getBoundingClientRect().height, $('#text').getBoundingClientRect().height]";
        let empty = page_eval(c, height).await;
        let form = empty[0].as_f64().unwrap();
        assert!(
            form <= 0.15 * f64::from(size.1),
            "{size:?}: the form is {form} px high"
        );
        let text = c.find(Locator::Id("text")).await.unwrap();
        text.send_keys("one").await.unwrap();
        for line in ["two", "three", "four"] {
            // Shift+Enter: a new line, not a send.
            text.send_keys(&format!("\u{E008}\u{E007}\u{E008}{line}"))
                .await
                .unwrap();
        }
        assert_eq!(
            page_eval(c, "return $('#text').value").await,
            json!("one\ntwo\nthree\nfour")
        );
        let four = page_eval(c, height).await;
        assert!(
            four[1].as_f64().unwrap() > empty[1].as_f64().unwrap() + 40.0,
            "{size:?}: the text box grew with four lines: {empty} -> {four}"
        );
        c.execute(
            "const t = document.getElementById('text'); t.value = 'line\\n'.repeat(80); \
             t.dispatchEvent(new Event('input')); return true",
            vec![],
        )
        .await
        .unwrap();
        let full = page_eval(
            c,
            "const s = $('#send-button').getBoundingClientRect(); \
             return [$('#text').getBoundingClientRect().height, s.bottom <= window.innerHeight]",
        )
        .await;
        assert!(
            full[0].as_f64().unwrap() <= f64::from(size.1) / 3.0 + 1.0,
            "{size:?}: at most a third of the screen: {full}"
        );
        assert_eq!(full[1], json!(true), "{size:?}: Send stays on screen");
        tab.close().await;
    }
    app.shutdown().await;
}

/// Holds every `fetch` the page makes until the test calls
/// `window.releaseFetches()`: a slow network, as during an election.
const SLOW_NETWORK: &str = "
    const realFetch = window.fetch;
    const held = [];
    window.releaseFetches = () => { held.splice(0).forEach((go) => go()); return true; };
    window.heldFetches = () => held.length;
    window.fetch = (...args) => new Promise((go) => held.push(go)).then(() => realFetch(...args));
    return true";

/// What is typed while a message is on its way is the next draft: the send
/// completing takes away only what was sent, and Enter pressed again while
/// it is on its way neither sends it twice nor reports a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_while_a_message_is_sending_keeps_the_new_draft() {
    let Some(tab) = Browser::open("typing_while_sending", PHONE).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    tab.load(&app.base_url).await;
    let c = &tab.client;
    eval(c, SLOW_NETWORK).await;
    c.find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys("ann")
        .await
        .unwrap();
    let text = c.find(Locator::Id("text")).await.unwrap();
    text.send_keys("first message\u{E007}").await.unwrap();
    page_wait(
        c,
        "return window.heldFetches() === 1",
        "the send on its way",
    )
    .await;
    // The next message typed after it, and Enter pressed again.
    text.send_keys(" and now the second\u{E007}").await.unwrap();
    eval(c, "return window.releaseFetches()").await;
    page_wait(
        c,
        "return items().length === 1 && window.heldFetches() === 0",
        "the first message shown",
    )
    .await;
    // Anything a second send would bring back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eval(c, "return window.releaseFetches()").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        page_eval(
            c,
            "return [$('#text').value, $('#error').hidden, $('#error').textContent, \
             items().map(li => li.querySelector('.text').textContent)]"
        )
        .await,
        json!(["and now the second", true, "", ["first message"]]),
        "the new draft kept, no error, the first message once"
    );
    let stored = app.get_json("/api/messages").await;
    assert_eq!(stored.as_array().unwrap().len(), 1, "{stored}");
    tab.close().await;
    app.shutdown().await;
}

/// Without JavaScript, Back after a post returned to a page whose text box
/// the browser had filled in again with the message just sent, under a new
/// form key: sending it as it stood stored it twice. The text box is not
/// restored; the name still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_after_a_post_without_javascript_does_not_offer_the_message_again() {
    let settings = Settings {
        javascript: false,
        ..Settings::default()
    };
    let Some(tab) = Browser::open_with("back_after_post", PHONE, settings).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    app.post_message("bob", "already here").await;
    let c = &tab.client;
    c.goto(&app.base_url).await.unwrap();
    assert_eq!(
        page_eval(c, "return $('#connection').dataset.state").await,
        json!("offline"),
        "the script does not run"
    );
    c.find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys("Zoe")
        .await
        .unwrap();
    c.find(Locator::Id("text"))
        .await
        .unwrap()
        .send_keys("sent without a script")
        .await
        .unwrap();
    c.find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let sent = "return document.readyState === 'complete' && items().length === 2 \
                && newest().querySelector('.text').textContent === 'sent without a script'";
    page_wait(c, sent, "the page after the post").await;
    assert_eq!(page_eval(c, "return $('#text').value").await, json!(""));
    c.back().await.unwrap();
    page_wait(c, sent, "the page Back returns to").await;
    assert_eq!(
        page_eval(c, "return [$('#text').value, $('#name').value]").await,
        json!(["", "Zoe"]),
        "the message sent is not in the box to be sent again"
    );
    assert_eq!(app.message_count().await, 2);
    tab.close().await;
    app.shutdown().await;
}

/// Contrast ratios (WCAG 2) of what the page shows, against the page's own
/// background: each colour as computed, composited over it.
const CONTRAST_JS: &str = r#"
const parse = (c) => {
  let m = c.match(/^rgba?\(([^)]*)\)/);
  if (m) { const v = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number); return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1]; }
  m = c.match(/^color\(srgb ([^)]*)\)/);
  if (m) { const v = m[1].split(/[ \/]+/).filter(Boolean).map(Number); return [v[0] * 255, v[1] * 255, v[2] * 255, v.length > 3 ? v[3] : 1]; }
  throw new Error('unparsed colour ' + c);
};
const over = (f, b) => [0, 1, 2].map((i) => f[i] * f[3] + b[i] * (1 - f[3]));
const lum = (c) => {
  const [r, g, b] = c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
const probe = document.createElement('div');
probe.style.background = 'Canvas';
document.body.append(probe);
const bg = parse(getComputedStyle(probe).backgroundColor).slice(0, 3);
probe.remove();
const color = (sel, pseudo) => over(parse(getComputedStyle($(sel), pseudo).color), bg);
const round = (x) => Math.floor(x * 100) / 100;
return {
  dark: matchMedia('(prefers-color-scheme: dark)').matches,
  time: round(ratio(color('.meta time'), bg)),
  error: round(ratio(color('#error'), bg)),
  placeholder: round(ratio(color('#text', '::placeholder'), bg)),
  fieldBorder: round(ratio(over(parse(getComputedStyle($('#text')).borderTopColor), bg), bg)),
};
"#;

/// In a dark colour scheme the times and the error message were grey and
/// red at 3.9:1 against the background, and in both schemes the text
/// fields' borders were 2.1:1 (light) and 2.7:1 (dark). Text is now at
/// least 4.5:1 and the fields' borders at least 3:1, light and dark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_fields_have_enough_contrast_light_and_dark() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "hello").await;
    for dark in [false, true] {
        let settings = Settings {
            dark,
            ..Settings::default()
        };
        let Some(tab) = Browser::open_with("contrast", PHONE, settings).await else {
            return;
        };
        tab.load(&app.base_url).await;
        let c = &tab.client;
        // An error, as a user gets one: a message of blanks.
        send(c, "ann", "   ").await;
        page_wait(c, "return !$('#error').hidden", "the error").await;
        let measured = page_eval(c, CONTRAST_JS).await;
        assert_eq!(measured["dark"], json!(dark), "{measured}");
        for (what, least) in [
            ("time", 4.5),
            ("error", 4.5),
            ("placeholder", 4.5),
            ("fieldBorder", 3.0),
        ] {
            assert!(
                measured[what].as_f64().unwrap() >= least,
                "dark {dark}: {what} below {least}:1: {measured}"
            );
        }
        tab.close().await;
    }
    app.shutdown().await;
}

/// A stream the server refused (503: every connection taken, as after a
/// restart when every page reconnects at once, or a proxy's own refusal)
/// left the page "offline: reload the page" for good, missing every new
/// message although the server was back a moment later. The page now tries
/// again by itself, later each time, and fills the gap from the last
/// message it has, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_stream_is_tried_again_and_fills_the_gap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Some(tab) = Browser::open("refused_stream", PHONE).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = support::app::spawn_app_in(data.path(), &[("port", json!(port))]).await;
    app.post_message("ann", "before the restart").await;
    tab.load(&app.base_url).await;
    let c = &tab.client;
    app.shutdown().await;

    // Back with one connection allowed, and that one taken: the page's
    // next attempt is refused with a 503.
    let app = support::app::spawn_app_in(
        data.path(),
        &[
            ("port", json!(port)),
            ("max_connections", json!(1)),
            ("header_timeout_secs", json!(60)),
        ],
    )
    .await;
    let mut taken = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_ne!(
        page_eval(c, "return $('#connection').dataset.state").await,
        json!("live"),
        "the page's attempts were refused"
    );
    // The taken connection posts a message the page has not seen, and
    // closes: the server has room again.
    let body = json!({"name": "bob", "text": "while the page was refused"}).to_string();
    let request = format!(
        "POST /api/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    taken.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    taken.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    drop(taken);

    wait_for(
        c,
        "return document.getElementById('connection').dataset.state === 'live'",
        40,
        "the page live again by itself",
    )
    .await;
    page_wait(c, "return items().length === 2", "the message it missed").await;
    assert_eq!(
        shown_texts(c).await,
        json!(["before the restart", "while the page was refused"])
    );
    tab.close().await;
    app.shutdown().await;
}

/// A network path that stops passing data (a phone between cells, a proxy
/// that hangs) closes nothing: the page said "live" while its stream
/// brought nothing more, and missed what was posted. It now takes a stream
/// that brings no heartbeat for three of them for dead, says so, opens
/// another, and fills the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_bringing_anything_is_replaced_and_fills_the_gap() {
    let Some(tab) = Browser::open("stalled_stream", PHONE).await else {
        return;
    };
    let app = support::app::spawn_app(&[("heartbeat_secs", json!(1))]).await;
    app.post_message("ann", "before the stall").await;
    let _path = post_while_the_stream_is_stalled(&tab, &app).await;
    let c = &tab.client;
    page_wait(c, "return items().length === 2", "the message it missed").await;
    assert_eq!(
        shown_texts(c).await,
        json!(["before the stall", "while the path was stalled"])
    );
    tab.close().await;
    app.shutdown().await;
}

/// Loads the page through a path that then passes nothing more on the
/// connections it has open (the page's stream among them), posts "while
/// the path was stalled" directly, and waits until the page has said it is
/// no longer live and is live again on a new stream. The path is returned:
/// dropped, it stops.
async fn post_while_the_stream_is_stalled(tab: &Browser, app: &support::app::TestApp) -> Stall {
    let path = Stall::start(&app.base_url).await;
    tab.load(&path.url).await;
    let c = &tab.client;
    wait_for(
        c,
        "return document.getElementById('connection').dataset.state === 'live'",
        20,
        "the page live",
    )
    .await;

    // Every connection open now passes nothing more, and stays open.
    path.freeze_open_connections();
    app.post_message("bob", "while the path was stalled").await;
    wait_for(
        c,
        "return document.getElementById('connection').dataset.state !== 'live'",
        20,
        "the page no longer saying live",
    )
    .await;
    wait_for(
        c,
        "return document.getElementById('connection').dataset.state === 'live'",
        40,
        "the page live again on a new stream",
    )
    .await;
    path
}

/// The same in a room with no message yet: a stream that names no message
/// starts live, and so did the one that replaced it (the page had no id to
/// resume from, and the browser sends no `Last-Event-ID` before an event
/// set one), so the message posted in between never showed, until a
/// reload. The page now loads the latest messages whenever a stream opens
/// with nothing to resume from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_an_empty_room_fills_the_gap_when_its_stream_is_replaced() {
    let Some(tab) = Browser::open("stalled_empty_room", PHONE).await else {
        return;
    };
    let app = support::app::spawn_app(&[("heartbeat_secs", json!(1))]).await;
    let _path = post_while_the_stream_is_stalled(&tab, &app).await;
    let c = &tab.client;
    page_wait(c, "return items().length === 1", "the message it missed").await;
    app.post_message("ann", "after").await;
    page_wait(c, "return items().length === 2", "the next message").await;
    assert_eq!(
        shown_texts(c).await,
        json!(["while the path was stalled", "after"])
    );
    assert_eq!(
        page_eval(c, "return document.getElementById('empty') === null").await,
        json!(true),
        "no \"No messages yet\" beside them"
    );
    tab.close().await;
    app.shutdown().await;
}

/// A send over a network path that passes nothing more: the page waited
/// for ever, Send greyed out, and said nothing. It now gives up after 45 s,
/// says so, and the same message sent again is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_gets_no_answer_says_so_and_is_stored_once_when_sent_again() {
    let Some(tab) = Browser::open("stalled_send", PHONE).await else {
        return;
    };
    let app = support::app::spawn_app(&[]).await;
    // Not an empty room: there the page loads the latest messages as its
    // stream opens, and the browser may keep that fetch's connection for
    // the next request, which the frozen path would then hold too (how
    // many frozen connections the browser reuses is not what this tests).
    app.post_message("bob", "before").await;
    let path = Stall::start(&app.base_url).await;
    tab.load(&path.url).await;
    let c = &tab.client;
    wait_for(
        c,
        "return document.getElementById('connection').dataset.state === 'live'",
        20,
        "the page live",
    )
    .await;
    path.freeze_everything();
    send(c, "ann", "into the void").await;
    wait_for(
        c,
        "const e = document.getElementById('error'); \
         return !e.hidden && e.textContent.startsWith('No answer from the server') \
         && !document.getElementById('send-button').disabled",
        70,
        "the page saying the send got no answer",
    )
    .await;
    path.let_new_connections_pass();
    c.find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page_wait(
        c,
        "return document.getElementById('error').hidden",
        "the second send answered",
    )
    .await;
    let listed = app.get_json("/api/messages").await;
    let texts: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    // Whether the first send reached the server or not, one message.
    assert_eq!(texts, ["before", "into the void"]);
    tab.close().await;
    app.shutdown().await;
}

/// A proxy in front of the app whose open connections can be frozen: they
/// stay open and pass nothing more, either way, while new ones pass, as
/// when a network path forgets a flow.
struct Stall {
    url: String,
    /// Connections are numbered as they come; those numbered below this
    /// are frozen.
    frozen_before: tokio::sync::watch::Sender<u64>,
    made: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Stall {
    async fn start(upstream: &str) -> Stall {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (frozen_before, frozen) = tokio::sync::watch::channel(0u64);
        let made = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = made.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut frozen = frozen.clone();
                let this = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let froze = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                        _ = frozen.wait_for(|before| *before > this) => true,
                    };
                    if froze {
                        // Open, silent: held until the test ends.
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        Stall {
            url,
            frozen_before,
            made,
            accept,
        }
    }

    /// Freezes every connection made so far; later ones pass.
    fn freeze_open_connections(&self) {
        let made = self.made.load(std::sync::atomic::Ordering::SeqCst);
        self.frozen_before.send_replace(made);
    }

    /// Freezes every connection, those made later too.
    fn freeze_everything(&self) {
        self.frozen_before.send_replace(u64::MAX);
    }

    /// Lets connections made from now on pass (those frozen stay so).
    fn let_new_connections_pass(&self) {
        self.freeze_open_connections();
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A proxy in front of the app that lets the test cut the page's event
/// streams and hold new ones back, as a flaky network does, while every
/// other request goes through.
///
/// It carries one request per connection: it looks only at the first
/// request's head, and a browser sends its next request on a connection
/// it holds open. An event stream reopened on the connection of an
/// earlier post went through a closed gate, so the stream brought the
/// reader's message back whenever the test was slower than the browser's
/// reconnection delay (a loaded machine), and what the test held back
/// was not held.
struct StreamGate {
    url: String,
    open: tokio::sync::watch::Sender<bool>,
    streams: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl StreamGate {
    async fn start(upstream: &str) -> StreamGate {
        use tokio::io::AsyncReadExt;

        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (open, opened) = tokio::sync::watch::channel(true);
        let streams = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = streams.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut opened = opened.clone();
                let kept = kept.clone();
                let relay = tokio::spawn(async move {
                    // The request's head says whether it is an event stream.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if head.starts_with(b"GET /api/events")
                        && opened.wait_for(|open| *open).await.is_err()
                    {
                        return;
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let head = one_request_per_connection(&head);
                    if tokio::io::AsyncWriteExt::write_all(&mut server, &head)
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                kept.lock().unwrap().push(relay.abort_handle());
            }
        });
        StreamGate {
            url,
            open,
            streams,
            accept,
        }
    }

    /// Cuts every connection open now (the page's event stream among
    /// them) and holds back new event streams until `open`.
    fn cut_and_hold(&self) {
        self.open.send_replace(false);
        for relay in self.streams.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// `head` (a request's head and what came after it) asking the server to
/// close the connection after its answer, so that the browser sends its
/// next request on a new connection, whose head the gate sees.
fn one_request_per_connection(head: &[u8]) -> Vec<u8> {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let text = std::str::from_utf8(&head[..end]).expect("an ASCII head");
    let mut rewritten: String = text
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
        .map(|line| format!("{line}\r\n"))
        .collect();
    rewritten.push_str("Connection: close\r\n\r\n");
    let mut out = rewritten.into_bytes();
    out.extend_from_slice(&head[end + 4..]);
    out
}

impl Drop for StreamGate {
    fn drop(&mut self) {
        self.accept.abort();
        for relay in self.streams.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

/// The event stream dropped; meanwhile bob posted, then the reader sent a
/// message of her own. The page showed hers, and when the stream came back
/// and replayed what it had missed, bob's below it: the page's order was
/// not the chat's, until a reload. Messages the stream brings now go
/// before the reader's own that it has not brought yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_missed_while_the_stream_was_down_go_before_your_own() {
    let Some(tab) = Browser::open("gap_order", PHONE).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    app.post_message("ann", "before the drop").await;
    let gate = StreamGate::start(&app.base_url).await;
    tab.load(&gate.url).await;
    let c = &tab.client;

    gate.cut_and_hold();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'reconnecting'",
        "the stream dropped",
    )
    .await;
    app.post_message("bob", "bob, while the stream was down")
        .await;
    send(c, "alice", "alice, after bob").await;
    page_wait(
        c,
        "return items().length === 2 && $('#text').value === ''",
        "alice's own message",
    )
    .await;
    gate.open();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'live' && items().length === 3",
        "the missed message",
    )
    .await;
    let stored: Vec<Value> = app
        .get_json("/api/messages")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(
        shown_texts(c).await,
        json!(stored),
        "the page shows the chat's order"
    );
    // And it goes on: a new message after all of them.
    app.post_message("bob", "and one more").await;
    page_wait(
        c,
        "return items().length === 4 && newest().querySelector('.text').textContent === 'and one more'",
        "the next message last",
    )
    .await;
    tab.close().await;
    drop(gate);
    app.shutdown().await;
}

/// The connection state's words, each drawn on one line, and the state
/// inside the viewport.
const STATE_WORDS_JS: &str = "
const c = $('#connection'), t = c.firstChild, r = document.createRange();
const broken = [];
let at = 0;
for (const word of t.data.split(' ')) {
  r.setStart(t, at); r.setEnd(t, at + word.length);
  if ([...r.getClientRects()].filter((x) => x.width > 0).length !== 1) broken.push(word);
  at += word.length + 1;
}
const box = c.getBoundingClientRect();
return { label: t.data, broken, inside: box.left >= 0 && box.right <= window.innerWidth };
";

/// With large text (a phone at 200 %: 195 CSS pixels) the connection state
/// beside the title was squeezed into a column a few letters wide:
/// \"reconnecting…\" broken over six lines, \"live\" over two. The state now
/// goes under the title when it does not fit beside it, its words whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_state_keeps_its_words_whole_with_large_text() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "hello").await;
    let gate = StreamGate::start(&app.base_url).await;
    for size in [(195, 422), PHONE] {
        let Some(tab) = Browser::open("state_words", size).await else {
            return;
        };
        gate.open();
        tab.load(&gate.url).await;
        let c = &tab.client;
        let live = page_eval(c, STATE_WORDS_JS).await;
        gate.cut_and_hold();
        page_wait(
            c,
            "return $('#connection').dataset.state === 'reconnecting'",
            "the stream dropped",
        )
        .await;
        let reconnecting = page_eval(c, STATE_WORDS_JS).await;
        for shown in [live, reconnecting] {
            assert_eq!(
                [&shown["broken"], &shown["inside"]],
                [&json!([]), &json!(true)],
                "{size:?}: {shown}"
            );
        }
        tab.close().await;
    }
    let settings = Settings {
        javascript: false,
        ..Settings::default()
    };
    let Some(tab) = Browser::open_with("state_words", (195, 422), settings).await else {
        return;
    };
    tab.client.goto(&app.base_url).await.unwrap();
    let offline = page_eval(&tab.client, STATE_WORDS_JS).await;
    assert_eq!(
        [&offline["broken"], &offline["inside"]],
        [&json!([]), &json!(true)],
        "{offline}"
    );
    tab.close().await;
    drop(gate);
    app.shutdown().await;
}

/// The answer to a send was lost (the message stored, the connection cut
/// before the reply): the page kept the draft and its idempotency key, so
/// that sending it again stores it once. But a draft then changed was sent
/// under the same key and refused: "a different message already has id
/// ...". A changed draft is a new message with a key of its own; the same
/// draft sent again still stores nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_draft_after_a_lost_answer_is_sent_as_a_new_message() {
    let Some(tab) = Browser::open("lost_answer", PHONE).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    tab.load(&app.base_url).await;
    let c = &tab.client;
    // The next send reaches the server, and its answer is lost.
    eval(
        c,
        "const realFetch = window.fetch;
         window.fetch = (...args) => { window.fetch = realFetch;
           return realFetch(...args).then(() => { throw new TypeError('Failed to fetch'); }); };
         return true",
    )
    .await;
    send(c, "ann", "first try").await;
    page_wait(
        c,
        "return !$('#error').hidden && $('#text').value === 'first try' && items().length === 1",
        "the lost answer reported, the draft kept, the message shown live",
    )
    .await;
    // Sent again as it is: stored once.
    c.find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page_wait(
        c,
        "return $('#error').hidden && $('#text').value === ''",
        "the retry",
    )
    .await;
    assert_eq!(app.message_count().await, 1);

    // Lost again, then changed before sending.
    eval(
        c,
        "const realFetch = window.fetch;
         window.fetch = (...args) => { window.fetch = realFetch;
           return realFetch(...args).then(() => { throw new TypeError('Failed to fetch'); }); };
         return true",
    )
    .await;
    send(c, "ann", "second").await;
    page_wait(
        c,
        "return !$('#error').hidden && items().length === 2",
        "the lost answer reported",
    )
    .await;
    send(c, "ann", "second, changed").await;
    page_wait(c, "return items().length === 3", "the changed message").await;
    assert_eq!(
        page_eval(
            c,
            "return [$('#error').hidden, $('#error').textContent, $('#text').value, \
             items().map(li => li.querySelector('.text').textContent)]"
        )
        .await,
        json!([true, "", "", ["first try", "second", "second, changed"]])
    );
    tab.close().await;
    app.shutdown().await;
}

/// The page remembered the name in the box whenever Send was pressed, so a
/// name the server refused (65 characters) was filled in again at the next
/// visit, to be refused again. A name is now remembered once a message was
/// sent with it, as the form post's cookie is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_name_is_not_remembered() {
    let Some(tab) = Browser::open("refused_name", PHONE).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    tab.load(&app.base_url).await;
    let c = &tab.client;
    send(c, "ann", "hello").await;
    page_wait(
        c,
        "return $('#text').value === '' && items().length === 1",
        "sent as ann",
    )
    .await;
    let long = "n".repeat(65);
    send(c, &long, "again").await;
    page_wait(
        c,
        "return !$('#error').hidden && $('#error').textContent.includes('at most 64')",
        "the long name refused",
    )
    .await;
    tab.load(&app.base_url).await;
    assert_eq!(
        page_eval(c, "return $('#name').value").await,
        json!("ann"),
        "the name last sent with"
    );
    assert_eq!(app.message_count().await, 1);
    tab.close().await;
    app.shutdown().await;
}

/// A reader who blocks cookies and site data got a page that never went
/// live ("not live: reload to see new messages") and sent by reloading:
/// reading the remembered name from `localStorage` throws there, and the
/// script stopped at its first line. The page now works as for anyone
/// else, only without remembering the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_site_data_leaves_the_page_live() {
    let settings = Settings {
        block_storage: true,
        ..Settings::default()
    };
    let Some(tab) = Browser::open_with("blocked_storage", PHONE, settings).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    let c = &tab.client;
    c.goto(&app.base_url).await.unwrap();
    assert_eq!(
        eval(
            c,
            "try { localStorage.length; return 'storage allowed'; } catch (e) { return e.name; }"
        )
        .await,
        json!("SecurityError"),
        "site data is blocked"
    );
    page_wait(
        c,
        "return $('#connection').dataset.state === 'live'",
        "the page live",
    )
    .await;
    eval(c, "window.noReload = true; return true").await;
    send(c, "ann", "sent without site data").await;
    page_wait(
        c,
        "return items().length === 1 && $('#text').value === '' && $('#error').hidden",
        "the message sent by the script",
    )
    .await;
    app.post_message("bob", "and a reply, live").await;
    page_wait(c, "return items().length === 2", "the reply").await;
    assert_eq!(
        eval(c, "return window.noReload === true").await,
        json!(true)
    );
    tab.close().await;
    app.shutdown().await;
}

/// Without JavaScript, a second tab opened on the page got it from the
/// browser's cache (a 304 on revalidation), form key and all: two tabs held
/// one key, and whichever sent second was refused, "a different message
/// already has id ...". Each tab now gets a page of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_without_javascript_each_send_their_own_message() {
    let settings = Settings {
        javascript: false,
        ..Settings::default()
    };
    let Some(tab) = Browser::open_with("two_tabs_no_js", PHONE, settings).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    app.post_message("bob", "hello").await;
    let c = &tab.client;
    c.goto(&app.base_url).await.unwrap();
    let first = c.window().await.unwrap();
    let second = c.new_window(true).await.unwrap().handle;
    c.switch_to_window(second).await.unwrap();
    c.goto(&app.base_url).await.unwrap();

    for (window, text) in [
        (None, "from the second tab"),
        (Some(first), "from the first tab"),
    ] {
        if let Some(window) = window {
            c.switch_to_window(window).await.unwrap();
        }
        c.find(Locator::Id("name"))
            .await
            .unwrap()
            .send_keys("ann")
            .await
            .unwrap();
        c.find(Locator::Id("text"))
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
        c.find(Locator::Id("send-button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(
            c,
            &format!(
                "return document.readyState === 'complete' && location.pathname === '/' \
                 && newest().querySelector('.text').textContent === {}",
                json!(text)
            ),
            "the page after sending",
        )
        .await;
        assert_eq!(
            page_eval(c, "return [$('#error').hidden, $('#error').textContent]").await,
            json!([true, ""]),
            "{text}"
        );
    }
    assert_eq!(app.message_count().await, 3);
    tab.close().await;
    app.shutdown().await;
}

/// On a phone, Enter on the on-screen keyboard sent the message, and a
/// phone keyboard has no Shift+Enter: a phone user could not write a
/// message of several lines. On a touch screen Enter now starts a new line
/// and Send sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_touch_screen_enter_starts_a_new_line() {
    let settings = Settings {
        touch: true,
        ..Settings::default()
    };
    let Some(tab) = Browser::open_with("touch_enter", PHONE, settings).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    tab.load(&app.base_url).await;
    let c = &tab.client;
    assert_eq!(
        eval(c, "return matchMedia('(pointer: coarse)').matches").await,
        json!(true)
    );
    c.find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys("ann")
        .await
        .unwrap();
    c.find(Locator::Id("text"))
        .await
        .unwrap()
        .send_keys("first line\u{E007}second line")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        page_eval(c, "return [$('#text').value, items().length]").await,
        json!(["first line\nsecond line", 0]),
        "Enter started a new line and sent nothing"
    );
    c.find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page_wait(
        c,
        "return items().length === 1 && $('#text').value === ''",
        "the message sent",
    )
    .await;
    assert_eq!(
        page_eval(c, "return newest().querySelector('.text').textContent").await,
        json!("first line\nsecond line")
    );
    tab.close().await;
    app.shutdown().await;
}

/// A refused send left the reader in the text box (with JavaScript) or at
/// the top of a new page (without), whichever field the error was about,
/// and nothing tied the error to the field: a screen reader said nothing.
/// Now the field the error names gets the focus, is marked invalid and is
/// described by the error, which a screen reader reads out with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_send_puts_the_focus_on_the_field_the_error_names() {
    let app = spawn_app(&[]).await;
    for javascript in [false, true] {
        let settings = Settings {
            javascript,
            ..Settings::default()
        };
        let Some(tab) = Browser::open_with("error_focus", PHONE, settings).await else {
            return;
        };
        let c = &tab.client;
        c.goto(&app.base_url).await.unwrap();
        let long_name = "n".repeat(65);
        c.find(Locator::Id("name"))
            .await
            .unwrap()
            .send_keys(&long_name)
            .await
            .unwrap();
        c.find(Locator::Id("text"))
            .await
            .unwrap()
            .send_keys("keep this draft")
            .await
            .unwrap();
        c.find(Locator::Id("send-button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        page_wait(
            c,
            "return document.readyState === 'complete' && !!$('#error') && !$('#error').hidden",
            "the error",
        )
        .await;
        assert_eq!(
            page_eval(
                c,
                "const n = $('#name'); return [$('#error').textContent, document.activeElement.id, \
                 n.getAttribute('aria-invalid'), n.getAttribute('aria-describedby'), $('#text').value]"
            )
            .await,
            json!([
                "name must be at most 64 characters (got 65)",
                "name",
                "true",
                "error",
                "keep this draft"
            ]),
            "javascript {javascript}"
        );
        tab.close().await;
    }
    app.shutdown().await;
}

/// "New messages" and the last "Older messages" go away once used; used
/// from the keyboard, they took the focus with them, to the page's body,
/// where a screen reader loses its place. The focus now goes to the
/// history, which is focusable in every browser, so the arrow keys scroll
/// it on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buttons_that_go_away_leave_the_focus_on_the_history() {
    let app = spawn_app(&[]).await;
    post_many(&app, "ann", "message ", 150).await;
    let Some(tab) = Browser::open("focus_kept", PHONE).await else {
        return;
    };
    tab.load(&app.base_url).await;
    let c = &tab.client;
    assert_eq!(
        page_eval(c, "return $('#history').tabIndex").await,
        json!(0),
        "the history is in the tab order"
    );

    page_eval(c, "$('#history').scrollBy(0, -600); return true").await;
    page_wait(c, "return belowView() >= 500", "scrolled up").await;
    app.post_message("bob", "while you read back").await;
    page_wait(c, "return !$('#new-messages').hidden", "'New messages'").await;
    let button = c.find(Locator::Id("new-messages")).await.unwrap();
    eval(
        c,
        "document.getElementById('new-messages').focus(); return true",
    )
    .await;
    button.send_keys("\u{E007}").await.unwrap();
    page_wait(c, "return $('#new-messages').hidden", "'New messages' used").await;
    assert_eq!(
        page_eval(c, "return document.activeElement.id").await,
        json!("history")
    );

    let older = c.find(Locator::Id("older")).await.unwrap();
    eval(c, "document.getElementById('older').focus(); return true").await;
    older.send_keys("\u{E007}").await.unwrap();
    page_wait(
        c,
        "return items().length === 151 && !$('#older')",
        "the oldest messages",
    )
    .await;
    assert_eq!(
        page_eval(c, "return document.activeElement.id").await,
        json!("history")
    );
    tab.close().await;
    app.shutdown().await;
}

/// On a desktop the name box, the text box and Send were three heights in
/// one row (36, 42 and 40 px), so the "Name" label sat lower than the
/// "Message" label beside it. They are now one height, the labels on one
/// line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_form_is_one_even_row() {
    let app = spawn_app(&[]).await;
    let Some(tab) = Browser::open("even_row", DESKTOP).await else {
        return;
    };
    tab.load(&app.base_url).await;
    let measured = page_eval(
        &tab.client,
        "const r = (s) => $(s).getBoundingClientRect();
         return {
           labels: Math.abs(r('.name-field .label').top - r('.text-field .label').top),
           heights: [r('#name').height, r('#text').height, r('#send-button').height],
         }",
    )
    .await;
    let heights: Vec<f64> = measured["heights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_f64().unwrap())
        .collect();
    assert!(
        measured["labels"].as_f64().unwrap() < 1.0
            && heights.iter().all(|h| (h - heights[0]).abs() < 1.0),
        "{measured}"
    );
    tab.close().await;
    app.shutdown().await;
}

/// What the page has told screen readers, oldest first: the entries of
/// its visually hidden live region.
const ANNOUNCED_JS: &str = "return [...$('#announcer').children].map((e) => e.textContent)";

/// A message that arrived live was never announced: a screen reader user
/// heard nothing until they went looking. Making the whole history a live
/// region would read out a hundred messages at load and whenever older
/// messages are loaded above. Now each new message from someone else is
/// added, once, to a visually hidden log of its own; nothing is added at
/// load, for older messages or for the reader's own message; and the
/// messages a reconnect fills the gap with are told as one summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_new_messages_from_others_are_announced_once_each() {
    let app = spawn_app(&[]).await;
    post_many(&app, "ann", "message ", 150).await;
    let gate = StreamGate::start(&app.base_url).await;
    let Some(tab) = Browser::open("announced", DESKTOP).await else {
        return;
    };
    tab.load(&gate.url).await;
    let c = &tab.client;
    let announced = || page_eval(c, ANNOUNCED_JS);
    assert_eq!(
        page_eval(
            c,
            "const a = $('#announcer'); return [a.getAttribute('role'), a.closest('#history') === null]"
        )
        .await,
        json!(["log", true]),
        "a log of its own, outside the history"
    );
    // Long enough for the first stream's replay to have settled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(announced().await, json!([]), "nothing at load");

    page_eval(c, "$('#older').scrollIntoView(); return true").await;
    c.find(Locator::Id("older"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page_wait(c, "return items().length === 150", "older messages").await;
    assert_eq!(announced().await, json!([]), "nothing for older messages");

    send(c, "me", "my own message").await;
    page_wait(
        c,
        "return items().length === 151 && !newest().hasAttribute('data-unconfirmed')",
        "my own message, confirmed by the stream",
    )
    .await;
    assert_eq!(announced().await, json!([]), "nothing for my own message");

    // The stream may bring the reader's message back before the answer to
    // the send: here the answer is held until the stream has shown it.
    page_eval(
        c,
        "const send = window.fetch;
         window.fetch = async (url, options) => {
           const response = await send(url, options);
           if (options && options.method === 'POST') {
             const id = JSON.parse(options.body).id;
             while (!document.getElementById('m-' + id)) await new Promise((r) => setTimeout(r, 50));
           }
           return response;
         };
         return true",
    )
    .await;
    send(c, "me", "my message, back before its answer").await;
    page_wait(
        c,
        "return items().length === 152 && $('#text').value === ''",
        "my second message, answered after the stream brought it",
    )
    .await;
    assert_eq!(
        announced().await,
        json!([]),
        "nothing for my own message brought back first"
    );

    app.post_message("bob", "hello from bob").await;
    page_wait(c, "return items().length === 153", "bob's message").await;
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.length === 1"),
        "bob's message announced",
    )
    .await;
    assert_eq!(announced().await, json!(["bob: hello from bob"]));

    gate.cut_and_hold();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'reconnecting'",
        "the stream dropped",
    )
    .await;
    post_many(&app, "bob", "missed ", 5).await;
    gate.open();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'live' && items().length === 158",
        "the gap filled",
    )
    .await;
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.length === 2"),
        "the gap announced",
    )
    .await;
    assert_eq!(
        announced().await,
        json!(["bob: hello from bob", "5 new messages"]),
        "one summary for the gap"
    );

    app.post_message("carol", "after the gap").await;
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.length === 3"),
        "the next message announced",
    )
    .await;
    assert_eq!(
        announced().await,
        json!([
            "bob: hello from bob",
            "5 new messages",
            "carol: after the gap"
        ])
    );
    tab.close().await;
    drop(gate);
    app.shutdown().await;
}

/// The page keeps the keys of the messages it sent, so that the reader is
/// not told about their own message when the stream brings it back. It
/// kept every one for as long as the tab stayed open; it now lets a key go
/// once the stream has brought its message (it never brings one twice),
/// or the send was refused. Still nothing is read out for the reader's own
/// messages, however late the stream brings them: after the answers to
/// several sends made while it was down, or after an answer that was lost
/// and a send again; and others' messages are still read out, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn your_own_messages_are_not_announced_however_late_the_stream_brings_them() {
    let app = spawn_app(&[]).await;
    app.post_message("ann", "before").await;
    let gate = StreamGate::start(&app.base_url).await;
    let Some(tab) = Browser::open("own_not_announced", PHONE).await else {
        return;
    };
    tab.load(&gate.url).await;
    let c = &tab.client;
    // Long enough for the first stream's replay to have settled.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Three sends answered while the stream is held, then bob's message:
    // the stream brings all four back once it is let through.
    gate.cut_and_hold();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'reconnecting'",
        "the stream dropped",
    )
    .await;
    for i in 1..=3 {
        send(c, "me", &format!("mine {i}")).await;
        page_wait(
            c,
            &format!(
                "return $('#text').value === '' && items().length === {}",
                1 + i
            ),
            "my message shown",
        )
        .await;
    }
    app.post_message("bob", "while the stream was down").await;
    gate.open();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'live' && items().length === 5 \
         && !$('[data-unconfirmed]')",
        "the stream back, my messages brought back",
    )
    .await;
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.length === 1"),
        "bob's message announced",
    )
    .await;

    // An answer lost while the stream is held: the page has not shown the
    // message when the stream brings it back, and sending it again stores
    // and tells nothing new.
    gate.cut_and_hold();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'reconnecting'",
        "the stream dropped",
    )
    .await;
    eval(
        c,
        "const realFetch = window.fetch;
         window.fetch = (...args) => { window.fetch = realFetch;
           return realFetch(...args).then(() => { throw new TypeError('Failed to fetch'); }); };
         return true",
    )
    .await;
    send(c, "me", "mine, answer lost").await;
    page_wait(
        c,
        "return !$('#error').hidden && !$('#send-button').disabled",
        "the lost answer reported",
    )
    .await;
    assert_eq!(app.message_count().await, 6, "stored all the same");
    gate.open();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'live' && items().length === 6",
        "the message brought by the stream",
    )
    .await;
    c.find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page_wait(
        c,
        "return $('#error').hidden && $('#text').value === ''",
        "the retry",
    )
    .await;
    assert_eq!(app.message_count().await, 6);

    // Everything announced so far comes before the next message from
    // someone else, read out as it comes.
    app.post_message("carol", "after all of mine").await;
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.length === 2"),
        "carol's message announced",
    )
    .await;
    assert_eq!(
        page_eval(c, ANNOUNCED_JS).await,
        json!(["bob: while the stream was down", "carol: after all of mine"]),
        "only others' messages, each once"
    );
    tab.close().await;
    drop(gate);
    app.shutdown().await;
}

/// A DevTools command, through chromedriver's own endpoint for them: what
/// WebDriver cannot do, such as running a script in a tab before the page's.
#[derive(Debug)]
struct DevTools {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for DevTools {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

/// Opens the page in the tab's current window, as a browser without
/// `BroadcastChannel` would run it.
async fn load_without_broadcast_channel(tab: &Browser, url: &str) {
    tab.client
        .issue_cmd(DevTools {
            cmd: "Page.addScriptToEvaluateOnNewDocument",
            params: json!({ "source": "delete window.BroadcastChannel" }),
        })
        .await
        .expect("a script before the page's");
    tab.load(url).await;
    assert_eq!(
        eval(&tab.client, "return typeof BroadcastChannel").await,
        json!("undefined"),
        "no BroadcastChannel"
    );
}

/// Someone with two tabs of the page open in one browser heard their own
/// message, sent from one tab, read out in the other as someone else's:
/// each tab knew only the keys it had sent with itself. The tabs now tell
/// each other (by BroadcastChannel, or where a browser has none by a
/// `storage` event), so neither tab reads out the reader's own messages,
/// sent from either by the script or by a page of older history's form,
/// and both still read out everyone else's. A name sent with in one tab is
/// filled in the other where its box is empty, and the draft in the other
/// tab is left as it was.
async fn two_tabs_of_one_browser(test: &str, size: (u32, u32), broadcast_channel: bool) {
    let Some(tab) = Browser::open(test, size).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    app.post_message("ann", "before").await;
    let c = &tab.client;
    let load = || async {
        if broadcast_channel {
            tab.load(&app.base_url).await;
        } else {
            load_without_broadcast_channel(&tab, &app.base_url).await;
        }
    };
    load().await;
    let first = c.window().await.unwrap();
    let second = c.new_window(true).await.unwrap().handle;
    c.switch_to_window(second.clone()).await.unwrap();
    load().await;
    // Long enough for each first stream's replay to have settled.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let draft = c.find(Locator::Id("text")).await.unwrap();
    draft.send_keys("half a thought").await.unwrap();
    assert_eq!(page_eval(c, "return $('#name').value").await, json!(""));

    c.switch_to_window(first.clone()).await.unwrap();
    send(c, "me", "from my first tab").await;
    page_wait(
        c,
        "return $('#text').value === '' && items().length === 2",
        "sent from the first tab",
    )
    .await;

    c.switch_to_window(second.clone()).await.unwrap();
    page_wait(
        c,
        "return items().some((m) => m.querySelector('.text').textContent === 'from my first tab')",
        "the first tab's message in the second",
    )
    .await;
    // The stream brings messages in order and each is read out as it
    // comes: once bob's is read out, the reader's own would have been.
    app.post_message("bob", "after yours").await;
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.length > 0"),
        "bob's message read out in the second tab",
    )
    .await;
    assert_eq!(
        page_eval(c, ANNOUNCED_JS).await,
        json!(["bob: after yours"]),
        "the second tab reads out only bob's message, not the reader's own"
    );
    page_wait(
        c,
        "return $('#name').value === 'me'",
        "the name sent with in the first tab filled in",
    )
    .await;
    assert_eq!(
        page_eval(c, "return $('#text').value").await,
        json!("half a thought"),
        "the second tab's draft left as it was"
    );

    // And the other way round.
    send(c, "me", "from my second tab").await;
    page_wait(
        c,
        "return $('#text').value === '' && items().length === 4",
        "sent from the second tab",
    )
    .await;
    c.switch_to_window(first).await.unwrap();
    page_wait(
        c,
        "return items().length === 4",
        "the second tab's message in the first",
    )
    .await;
    app.post_message("carol", "after both").await;
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.length > 1"),
        "carol's message read out in the first tab",
    )
    .await;
    assert_eq!(
        page_eval(c, ANNOUNCED_JS).await,
        json!(["bob: after yours", "carol: after both"]),
        "the first tab reads out only others' messages"
    );

    // Sent by the form post from a page of older history, under the
    // form's key: the second tab takes that one for the reader's own too.
    let oldest = page_eval(c, "return items()[1].dataset.id").await;
    let older_page = format!("{}/?before={}", app.base_url, oldest.as_str().unwrap());
    c.goto(&older_page).await.unwrap();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'paged' && $('#name').value === 'me'",
        "the page of older history",
    )
    .await;
    c.find(Locator::Id("text"))
        .await
        .unwrap()
        .send_keys("from a page of older history")
        .await
        .unwrap();
    c.find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.switch_to_window(second).await.unwrap();
    page_wait(
        c,
        "return items().length === 6",
        "the form post in the second tab",
    )
    .await;
    app.post_message("dave", "after the form").await;
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.length > 2"),
        "dave's message read out in the second tab",
    )
    .await;
    assert_eq!(
        page_eval(c, ANNOUNCED_JS).await,
        json!([
            "bob: after yours",
            "carol: after both",
            "dave: after the form"
        ]),
        "the form post not read out"
    );
    tab.close().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn your_messages_from_another_tab_are_not_announced_on_a_phone() {
    two_tabs_of_one_browser("other_tab_phone", PHONE, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn your_messages_from_another_tab_are_not_announced_on_a_desktop() {
    two_tabs_of_one_browser("other_tab_desktop", DESKTOP, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn your_messages_from_another_tab_are_not_announced_without_broadcast_channel() {
    two_tabs_of_one_browser("other_tab_storage", PHONE, false).await;
}

/// A tab opened while a message sent from another tab was still on its
/// way (a post waiting out an election, or retried after a lost answer)
/// had not been told its key, which each tab told only the tabs open at
/// the time: when the stream brought the message, after that tab had
/// opened, it read the reader's own message out as someone else's. The
/// keys are now also kept in the browser's storage, which a tab reads
/// as it opens.
async fn a_tab_opened_while_your_message_is_on_its_way(test: &str, size: (u32, u32)) {
    let Some(tab) = Browser::open(test, size).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    app.post_message("ann", "before").await;
    let c = &tab.client;
    tab.load(&app.base_url).await;
    let first = c.window().await.unwrap();
    // The post leaves only once the test lets it go.
    page_eval(
        c,
        "const send = window.fetch;
         window.fetch = async (url, options) => {
           if (options && options.method === 'POST') {
             while (!window.letGo) await new Promise((r) => setTimeout(r, 50));
           }
           return send(url, options);
         };
         return true",
    )
    .await;
    send(c, "me", "on its way").await;
    page_wait(
        c,
        "return $('#send-button').disabled",
        "the send on its way",
    )
    .await;

    let second = c.new_window(true).await.unwrap().handle;
    c.switch_to_window(second.clone()).await.unwrap();
    tab.load(&app.base_url).await;
    // Long enough for the first stream's replay to have settled: what
    // comes after it is read out.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    c.switch_to_window(first).await.unwrap();
    page_eval(c, "window.letGo = true; return true").await;
    page_wait(
        c,
        "return $('#text').value === '' && items().length === 2",
        "sent from the first tab",
    )
    .await;
    c.switch_to_window(second).await.unwrap();
    page_wait(
        c,
        "return items().some((m) => m.querySelector('.text').textContent === 'on its way')",
        "the first tab's message in the second",
    )
    .await;
    // The stream brings messages in order and each is read out as it
    // comes: once bob's is read out, the reader's own would have been.
    app.post_message("bob", "after yours").await;
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.length > 0"),
        "bob's message read out in the second tab",
    )
    .await;
    assert_eq!(
        page_eval(c, ANNOUNCED_JS).await,
        json!(["bob: after yours"]),
        "{size:?}: the tab opened later reads out only bob's message, not the reader's own"
    );
    tab.close().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_opened_while_your_message_is_on_its_way_does_not_read_it_out_on_a_phone() {
    a_tab_opened_while_your_message_is_on_its_way("opened_later_phone", PHONE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_opened_while_your_message_is_on_its_way_does_not_read_it_out_on_a_desktop() {
    a_tab_opened_while_your_message_is_on_its_way("opened_later_desktop", DESKTOP).await;
}

/// A name sent with in one tab fills the other tabs' name box only where
/// nothing was typed in it: a name typed in the other tab (and left, to
/// write the text) stays as typed. Nothing tested that it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_typed_in_another_tab_is_left_alone() {
    for size in [PHONE, DESKTOP] {
        let Some(tab) = Browser::open("typed_name", size).await else {
            return;
        };
        let app = spawn_app(&[]).await;
        let c = &tab.client;
        tab.load(&app.base_url).await;
        let first = c.window().await.unwrap();
        let second = c.new_window(true).await.unwrap().handle;
        c.switch_to_window(second.clone()).await.unwrap();
        tab.load(&app.base_url).await;
        c.find(Locator::Id("name"))
            .await
            .unwrap()
            .send_keys("bo")
            .await
            .unwrap();
        c.find(Locator::Id("text"))
            .await
            .unwrap()
            .send_keys("half a thought")
            .await
            .unwrap();
        // Every change of the remembered name this tab is told of, after
        // the page's own listener has seen it.
        page_eval(
            c,
            "window.told = [];
             window.addEventListener('storage', (e) => { if (e.key === 'simplechat.name') told.push(e.newValue) });
             return document.activeElement.id",
        )
        .await;

        c.switch_to_window(first).await.unwrap();
        send(c, "me", "hello").await;
        page_wait(
            c,
            "return $('#text').value === '' && items().length === 1",
            "sent",
        )
        .await;

        c.switch_to_window(second).await.unwrap();
        page_wait(c, "return window.told.includes('me')", "the name told").await;
        assert_eq!(
            page_eval(c, "return [$('#name').value, $('#text').value]").await,
            json!(["bo", "half a thought"]),
            "{size:?}: the name typed in this tab, and its draft, left as they were"
        );
        tab.close().await;
        app.shutdown().await;
    }
}

/// What the first event stream replays as the page opens is part of the
/// page load, and is not read out: it was taken to be over only once no
/// message had come for 0.7 s, so in a busy room, with messages coming
/// more often than that, a screen reader user who had just opened the page
/// heard nothing at all. The page load is now over that long after the
/// stream opened, and the messages after it are read out as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_room_is_read_out_from_the_start() {
    let Some(tab) = Browser::open("busy_room", DESKTOP).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    app.post_message("ann", "before the page opened").await;
    tab.load(&app.base_url).await;
    let c = &tab.client;
    // A message every fifth of a second from the moment the page is live.
    for i in 1..=15 {
        app.post_message("bob", &format!("busy {i}")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    page_wait(
        c,
        &format!("{ANNOUNCED_JS}.includes('bob: busy 15')"),
        "the last message read out",
    )
    .await;
    tab.close().await;
    app.shutdown().await;
}

/// Without JavaScript, a refused send left the browser on the answer to
/// the form's POST: reloading the page asked to send the form again. The
/// page is now reached by a redirect, showing the error and the draft with
/// the focus on the field the error names; reloading it sends nothing and
/// shows a fresh form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_after_a_refused_send_without_javascript_sends_nothing() {
    let settings = Settings {
        javascript: false,
        ..Settings::default()
    };
    let Some(tab) = Browser::open_with("refused_reload", PHONE, settings).await else {
        return;
    };
    let app = spawn_app(&[]).await;
    app.post_message("bob", "already here").await;
    let c = &tab.client;
    c.goto(&app.base_url).await.unwrap();
    let long_name = "n".repeat(65);
    c.find(Locator::Id("name"))
        .await
        .unwrap()
        .send_keys(&long_name)
        .await
        .unwrap();
    c.find(Locator::Id("text"))
        .await
        .unwrap()
        .send_keys("keep this draft")
        .await
        .unwrap();
    let key = page_eval(c, "return $('input[name=id]').value").await;
    c.find(Locator::Id("send-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page_wait(
        c,
        "return document.readyState === 'complete' && !$('#error').hidden",
        "the error",
    )
    .await;
    assert_eq!(
        page_eval(
            c,
            "return [location.pathname, $('#error').textContent, document.activeElement.id, \
             $('#name').getAttribute('aria-invalid'), $('#name').value, $('#text').value, \
             $('input[name=id]').value, performance.getEntriesByType('navigation')[0].type]"
        )
        .await,
        json!([
            "/",
            "name must be at most 64 characters (got 65)",
            "name",
            "true",
            long_name,
            "keep this draft",
            key,
            "navigate"
        ]),
        "the page reached by a redirect, with the error and the draft"
    );

    c.refresh().await.unwrap();
    page_wait(
        c,
        "return document.readyState === 'complete' \
         && performance.getEntriesByType('navigation')[0].type === 'reload'",
        "the page reloaded",
    )
    .await;
    let reloaded = page_eval(
        c,
        "return [location.pathname, $('#error').hidden, $('#text').value, $('input[name=id]').value]",
    )
    .await;
    assert_eq!(
        reloaded.as_array().unwrap()[..3],
        [json!("/"), json!(true), json!("")],
        "a fresh form, nothing sent again: {reloaded}"
    );
    assert_ne!(reloaded[3], key, "a fresh key");
    assert_eq!(app.message_count().await, 1);
    tab.close().await;
    app.shutdown().await;
}

/// The store was wiped while a page was open (as when a page comes from
/// another deployment): the page's stream came back asking for what came
/// after a message the server did not have, went live, and the messages
/// posted before it came back never showed. The server now says the
/// page's place is unknown, and the page shows the latest messages
/// instead of its old history, then goes on live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_the_server_cannot_place_shows_the_latest_messages() {
    let Some(tab) = Browser::open("unknown_place", PHONE).await else {
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let old_data = tempfile::tempdir().unwrap();
    let app = support::app::spawn_app_in(old_data.path(), &[("port", json!(port))]).await;
    app.post_message("ann", "from the old store").await;
    let gate = StreamGate::start(&app.base_url).await;
    tab.load(&gate.url).await;
    let c = &tab.client;
    gate.cut_and_hold();
    page_wait(
        c,
        "return $('#connection').dataset.state === 'reconnecting'",
        "the stream dropped",
    )
    .await;
    app.shutdown().await;

    let new_data = tempfile::tempdir().unwrap();
    let app = support::app::spawn_app_in(new_data.path(), &[("port", json!(port))]).await;
    app.post_message("bob", "posted before the page came back")
        .await;
    gate.open();
    let texts = SHOWN_TEXTS;
    page_wait(
        c,
        "return $('#connection').dataset.state === 'live' && items().length === 1 \
         && newest().querySelector('.text').textContent === 'posted before the page came back'",
        "the latest messages instead of the old ones",
    )
    .await;
    app.post_message("bob", "and live after").await;
    page_wait(c, "return items().length === 2", "the next message").await;
    assert_eq!(
        page_eval(c, texts).await,
        json!(["posted before the page came back", "and live after"])
    );
    tab.close().await;
    drop(gate);
    app.shutdown().await;
}
