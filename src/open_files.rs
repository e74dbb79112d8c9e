//! The open files limit (`RLIMIT_NOFILE`) and the connections it leaves
//! room for.
//!
//! Every connection holds a file descriptor, and so does each connection
//! being refused over a bound. Once the process has none left, `accept`
//! fails (EMFILE) and a new connection, `/healthz` included, waits in the
//! kernel's backlog unanswered instead of getting the 503 that
//! `max_connections` promises. systemd starts services with a soft limit of
//! 1024 (the default `max_connections`) and a far higher hard limit, and
//! its documentation (systemd.exec(5), `LimitNOFILE=`) asks a program that
//! does not use `select(2)` to raise its soft limit to the hard one itself;
//! this server uses epoll (tokio), so it does, at start. What the hard limit
//! still does not fit is taken off the connection bound, and said once.

/// File descriptors kept for everything but client connections: at rest
/// the process holds about 16 (the listener, epoll, the store's files,
/// standard streams), the MongoDB driver up to about 40 (a pool of 10 per
/// member and two monitors each), and connections refused over a bound
/// take up to 64 while answered (`api::front`'s `MAX_REFUSALS`).
pub const RESERVED: u64 = 128;

/// The connection bound the open files limit allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    /// The most client connections open at once: `max_connections`, or
    /// fewer when the limit does not fit it.
    pub max_connections: usize,
    /// One line saying the bound was lowered, and what to change.
    pub warning: Option<String>,
}

/// Raises the soft open files limit to the hard one and returns the soft
/// limit in force then (`u64::MAX`: none). Where it cannot be raised (the
/// platform has no such limit, or a sandbox refuses `setrlimit`), the
/// limit in force is returned, as far as it is known.
///
/// `rlimit`, as the bench uses it: a well-kept crate whose one call also
/// knows macOS's own cap (`kern.maxfilesperproc`), which `setrlimit`
/// refuses to exceed there.
pub fn raise() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("cannot raise the open files limit: {e}");
            #[cfg(unix)]
            {
                rlimit::Resource::NOFILE
                    .get()
                    .map(|(soft, _)| soft)
                    .unwrap_or(u64::MAX)
            }
            #[cfg(not(unix))]
            {
                u64::MAX
            }
        }
    }
}

/// The connection bound for `max_connections` under an open files limit
/// of `limit`: `max_connections` when it fits with [`RESERVED`] beside
/// it; else as many as fit, with a line saying so (a server that serves
/// fewer connections than asked, each refused one answered 503, is what a
/// user expects more than one that does not start: the default
/// `max_connections` does not fit a hard limit of 1024).
///
/// Errors: not even one connection fits (one line).
pub fn fit(max_connections: usize, limit: u64) -> Result<Fit, String> {
    let room = limit.saturating_sub(RESERVED);
    if room == 0 {
        return Err(format!(
            "cannot start: the open files limit (ulimit -n) is {limit}, and the server keeps \
             {RESERVED} of them for itself, beside one per connection; raise it (ulimit -n, \
             systemd's LimitNOFILE)"
        ));
    }
    let wanted = u64::try_from(max_connections).unwrap_or(u64::MAX);
    if wanted <= room {
        return Ok(Fit {
            max_connections,
            warning: None,
        });
    }
    let fitting = usize::try_from(room).unwrap_or(usize::MAX);
    Ok(Fit {
        max_connections: fitting,
        warning: Some(format!(
            "max_connections is {max_connections}, but the open files limit (ulimit -n) is \
             {limit}, {RESERVED} of which the server keeps for itself: serving at most \
             {fitting} connections at once (more get 503); raise the limit (ulimit -n, \
             systemd's LimitNOFILE) or lower max_connections"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::{fit, RESERVED};

    #[test]
    fn the_bound_stays_when_it_fits_and_shrinks_to_what_fits_otherwise() {
        let stays = fit(1024, 1024 + RESERVED).unwrap();
        assert_eq!(stays.max_connections, 1024);
        assert_eq!(stays.warning, None);
        assert_eq!(fit(1024, u64::MAX).unwrap().max_connections, 1024);

        let lowered = fit(1024, 1024).unwrap();
        assert_eq!(lowered.max_connections, 1024 - 128);
        let warning = lowered.warning.unwrap();
        assert!(
            warning.contains("max_connections is 1024")
                && warning.contains("limit (ulimit -n) is 1024")
                && warning.contains("at most 896 connections"),
            "{warning}"
        );
        assert!(!warning.contains('\n'));

        assert_eq!(fit(usize::MAX, 1 + RESERVED).unwrap().max_connections, 1);
    }

    #[test]
    fn a_limit_with_no_room_for_a_connection_stops_the_start() {
        for limit in [0, 64, RESERVED] {
            let error = fit(1024, limit).unwrap_err();
            assert!(
                error.contains(&format!("limit (ulimit -n) is {limit}")),
                "{error}"
            );
        }
    }
}
