//! Shell sessions where the emulator has no pty and no process groups (not Unix): every
//! start is refused the way the agent refuses a shell it cannot start, so a client sees a
//! failed session instead of a hang, and nothing else of the emulator changes.

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{Interrupt, ShellEvent, ShellKind, ShellProps, ShellSettings, StartError};

/// What the agent's shell plugin would run; never constructed on this platform.
#[derive(Debug)]
pub(crate) struct ShellProcess {
    _never: std::convert::Infallible,
}

const UNSUPPORTED: &str = "shell sessions are emulated on Unix only";

impl ShellProcess {
    /// Refuses: no pty here.
    ///
    /// # Errors
    /// Always [`StartError::Pty`].
    pub(crate) fn spawn_pty(
        _kind: ShellKind,
        _commands: &str,
        _settings: ShellSettings,
        _events: mpsc::Sender<ShellEvent>,
        _paused: watch::Receiver<bool>,
    ) -> Result<Self, StartError> {
        Err(StartError::Pty(format!(
            "Failed to start pty: {UNSUPPORTED}\n"
        )))
    }

    /// Refuses: commands are not run here.
    ///
    /// # Errors
    /// Always [`StartError::Exec`].
    pub(crate) fn spawn_command(
        _props: &ShellProps,
        _separate: bool,
        _settings: ShellSettings,
        _events: mpsc::Sender<ShellEvent>,
        _paused: watch::Receiver<bool>,
    ) -> Result<Self, StartError> {
        Err(StartError::Exec(UNSUPPORTED.to_owned()))
    }

    /// Never called: no value of this type exists.
    pub(crate) fn pty_ready(&self) -> bool {
        match self._never {}
    }

    /// Never called: no value of this type exists.
    pub(crate) fn write_input(&mut self, _data: Bytes) -> bool {
        match self._never {}
    }

    /// Never called: no value of this type exists.
    pub(crate) fn input_failed(&mut self) {
        match self._never {}
    }

    /// Never called: no value of this type exists.
    pub(crate) fn resize(&self, _cols: u32, _rows: u32) -> Result<(), String> {
        match self._never {}
    }

    /// Never called: no value of this type exists.
    pub(crate) fn signal(&self, _signal: Interrupt) -> Result<(), String> {
        match self._never {}
    }

    /// Never called: no value of this type exists.
    pub(crate) fn stream_output_file(&mut self) {
        match self._never {}
    }
}
