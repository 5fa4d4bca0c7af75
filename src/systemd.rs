//! Telling systemd how `nzela run` is doing, for a `Type=notify` service
//! (see `systemd/nzela.service`): `READY=1` once the journal is open and
//! every source listens, `STOPPING=1` when a signal starts the shutdown,
//! each with a `STATUS=` line that `systemctl status nzela` shows.
//!
//! The notifications go to the datagram socket named by `NOTIFY_SOCKET`,
//! which systemd sets; without it (nzela started by hand, by a test or by
//! another supervisor) nothing is sent.

use sd_notify::NotifyState;

/// A change of state to report.
#[derive(Clone, Copy, Debug)]
pub enum State {
    /// Serving: every source takes messages.
    Ready,
    /// Stopping: no new messages; the work in flight is being finished.
    Stopping,
}

/// Reports `state` with `status` as the text systemd shows. A failure to
/// send is logged, never fatal: nzela works the same whether or not a
/// service manager listens.
pub async fn notify(state: State, status: String) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // A datagram to a local socket; it can still block while the service
    // manager's queue is full, so not on an async worker.
    let sent = tokio::task::spawn_blocking(move || {
        let state = match state {
            State::Ready => NotifyState::Ready,
            State::Stopping => NotifyState::Stopping,
        };
        sd_notify::notify(&[state, NotifyState::Status(&status)])
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, ?state, "cannot notify systemd"),
        Err(e) => tracing::warn!(error = %e, ?state, "cannot notify systemd"),
    }
}
