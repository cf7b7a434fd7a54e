//! sd_notify: tells the service manager (systemd `Type=notify`) that the appliance is ready,
//! reloading or stopping, by one datagram to the unix socket named in NOTIFY_SOCKET. Without
//! that variable every call does nothing, so `bootfarm serve` behaves the same by hand. Called
//! from the control thread only (a send to a local datagram socket never waits for long, and
//! a manager that is gone costs one failed send). No dependency: the protocol is one
//! `KEY=VALUE\n...` datagram, to a path or to an abstract address (a leading '@').

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// Where to send: resolved once from the environment at start.
pub struct Notifier {
    target: Option<Target>,
}

enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From NOTIFY_SOCKET; a no-op notifier when it is unset or empty.
    pub fn from_env() -> Notifier {
        Notifier::new(std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from))
    }

    pub fn new(socket: Option<PathBuf>) -> Notifier {
        use std::os::unix::ffi::OsStrExt;
        let target = socket.filter(|p| !p.as_os_str().is_empty()).map(|p| match p.as_os_str().as_bytes() {
            [b'@', rest @ ..] => Target::Abstract(rest.to_vec()),
            _ => Target::Path(p),
        });
        Notifier { target }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one state datagram ("READY=1\nSTATUS=..."). A failure is logged once per call and
    /// otherwise ignored: serving does not depend on the manager hearing it.
    pub fn send(&self, state: &str) {
        let Some(t) = &self.target else { return };
        let sent = UnixDatagram::unbound().and_then(|s| match t {
            Target::Path(p) => s.send_to(state.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                s.send_to_addr(state.as_bytes(), &addr)
            }
        });
        if let Err(e) = sent {
            tracing::warn!(state = %state.replace('\n', " "), "cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
    }

    /// Every listener is bound and every image open: `READY=1` with the generation served.
    pub fn ready(&self, generation: u64) {
        self.send(&format!("READY=1\nSTATUS=generation {generation}"));
    }

    /// A reload starts: `RELOADING=1` with the monotonic time systemd (253+) asks for.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading", monotonic_usec()));
    }

    /// A reload ended, with a new generation or refused (the old one keeps serving).
    pub fn reloaded(&self, generation: u64, refused: bool) {
        let status = if refused { format!("generation {generation} (last reload refused)") } else { format!("generation {generation}") };
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// Draining for shutdown.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC against.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safety: clock_gettime writes the local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(s: &UnixDatagram) -> String {
        let mut b = [0u8; 512];
        let n = s.recv(&mut b).expect("a notification");
        String::from_utf8_lossy(&b[..n]).into_owned()
    }

    #[test]
    fn sends_states_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("bootfarm-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(Some(path.clone()));
        assert!(n.enabled());
        n.ready(1);
        let m = recv(&listener);
        assert_eq!(m, "READY=1\nSTATUS=generation 1");
        n.reloading();
        let m = recv(&listener);
        let usec: u64 = m.lines().find_map(|l| l.strip_prefix("MONOTONIC_USEC=")).unwrap().parse().unwrap();
        assert!(m.starts_with("RELOADING=1\n") && usec > 0 && usec <= monotonic_usec(), "{m}");
        n.reloaded(2, false);
        assert_eq!(recv(&listener), "READY=1\nSTATUS=generation 2");
        n.reloaded(2, true);
        assert_eq!(recv(&listener), "READY=1\nSTATUS=generation 2 (last reload refused)");
        n.stopping();
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=draining");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("bootfarm-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::new(Some(PathBuf::from(format!("@{name}")))).stopping();
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=draining");
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        assert!(!Notifier::new(None).enabled());
        assert!(!Notifier::new(Some(PathBuf::new())).enabled());
        // A socket nobody listens on: the send fails, is logged, and serving goes on.
        Notifier::new(Some(PathBuf::from("/nonexistent/bootfarm/notify.sock"))).ready(1);
    }
}
