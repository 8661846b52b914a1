//! A pseudo-terminal for driving interactive programs as a person at a terminal would: the
//! program gets the terminal as its stdin, stdout and stderr and as its controlling terminal,
//! the test types into the master side, reads what the program shows, resizes the window and
//! inspects the terminal's mode (to check it was restored).

#![allow(dead_code, unreachable_pub)] // each suite uses its own part

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{LocalModes, Winsize, tcgetattr, tcsetwinsize};

/// A program running on a pseudo-terminal of its own.
pub struct Pty {
    master: std::fs::File,
    pub child: Child,
    output: mpsc::Receiver<Vec<u8>>,
    /// Everything the program showed so far.
    pub seen: Vec<u8>,
}

impl Pty {
    /// Starts `command` on a new terminal of `cols` × `rows`.
    pub fn spawn(command: &mut Command, cols: u16, rows: u16) -> Self {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().expect("a UTF-8 name"))
            .expect("open the slave")
            .into();
        resize_fd(&master, cols, rows);
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        command
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: between fork and exec only async-signal-safe system calls are made:
        // setsid and the TIOCSCTTY ioctl on the inherited stdin.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(command, || {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(std::io::stdin().as_fd())?;
                Ok(())
            });
        }
        let child = command.spawn().expect("the program starts");
        drop(slave);
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().expect("dup master");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            master,
            child,
            output,
            seen: Vec::new(),
        }
    }

    /// Types `bytes`.
    pub fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("type");
    }

    /// Waits until the screen shows `needle` after position `from` of [`Pty::seen`]; returns
    /// the position just after it.
    pub fn wait_for(&mut self, from: usize, needle: &str, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = find(&self.seen[from.min(self.seen.len())..], needle.as_bytes()) {
                return from + at + needle.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => panic!(
                    "the screen never showed {needle:?}; it shows: {:?}",
                    String::from_utf8_lossy(&self.seen[from.min(self.seen.len())..])
                ),
            }
        }
    }

    /// Reads what is left until the program closes the terminal (or `limit` passes).
    pub fn drain(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Ok(chunk) = self
            .output
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.extend_from_slice(&chunk);
        }
    }

    /// The window is now `cols` × `rows` (the program gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) {
        resize_fd(&self.master, cols, rows);
    }

    /// Whether the terminal is in its normal (cooked) mode: line editing and echo on, as
    /// every shell leaves it and as a program in raw mode must restore it.
    pub fn is_cooked(&self) -> bool {
        let termios = tcgetattr(&self.master).expect("tcgetattr");
        termios
            .local_modes
            .contains(LocalModes::ICANON | LocalModes::ECHO)
    }
}

fn resize_fd(fd: impl AsFd, cols: u16, rows: u16) {
    tcsetwinsize(
        fd,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .expect("TIOCSWINSZ");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
