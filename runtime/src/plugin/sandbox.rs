//! One plugin instance in its own store: memory cap, CPU budget, wall-clock timeout, an
//! empty WASI context, and the rule that any failure throws the instance away.
//!
//! Calls are made on a warm instance (kept between calls so a decision costs tens of
//! microseconds, not an instantiation). After any trap, timeout or bad answer the store is
//! dropped — wasmtime poisons a trapped instance anyway — and the next call instantiates a
//! fresh one from the `InstancePre` and runs `init` again.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{health, hooks, reconnect, types};
use super::capability::HostContext;
use super::convert;
use super::engine::{LoadedPlugin, RoleIndices, TICK};
use super::error::LoadError;
use super::text;
use crate::policy::{Grants, Limits, PluginSpec};

/// What a plugin's store holds.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    limiter: StoreLimiter,
    pub(crate) host: HostContext,
    /// Epoch ticks the current call has used, and its budget.
    ticks: u64,
    tick_budget: u64,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

// How many core instances, memories and tables components need, measured by instantiating
// them: a Rust component (wasm32-wasip2) 4 instances, 1 memory, 1 table; the
// componentize-py example (`examples/redis-check-py`, CPython inside) 14 instances, 1 memory
// of 12.3 MiB, 2 tables of 92 and 5678 elements; componentize-js 4 instances. The
// limits leave about twice the largest; they only matter together with the memory cap, which
// is what bounds the memory a plugin holds.

/// Core instances a plugin's store may create.
const MAX_INSTANCES: usize = 32;
/// Linear memories a store may create (their sizes count against one cap together).
const MAX_MEMORIES: usize = 8;
/// Tables a store may create.
const MAX_TABLES: usize = 8;
/// Table elements all tables of a store may hold together (a pointer each: 800 KB).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Caps what a store's instances may allocate, summed over the whole store: a component
/// may instantiate many core modules, each with several memories (multi-memory), and a cap
/// per memory would let it have that many times the cap.
///
/// Memories and tables never shrink and live as long as the store, so the running totals
/// are the sums of their current sizes.
struct StoreLimiter {
    /// Bytes all linear memories may hold together.
    memory_cap: usize,
    /// Bytes they hold now.
    memory: usize,
    /// Elements all tables hold now.
    table_elements: usize,
    /// The memory cap was hit (the next failure says so).
    exceeded: bool,
}

impl StoreLimiter {
    fn new(memory_cap: usize) -> Self {
        Self {
            memory_cap,
            memory: 0,
            table_elements: 0,
            exceeded: false,
        }
    }
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A growth past the memory's own maximum fails after this call without growing
        // anything; counting it would leak budget.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let total = self.memory.saturating_add(desired.saturating_sub(current));
        if total > self.memory_cap {
            self.exceeded = true;
            wasmtime::bail!("memory limit reached")
        }
        // Counted before the growth happens; an OS failure to grow afterwards (rare) keeps
        // it counted: never less than what the plugin holds. (`memory_grow_failed` cannot
        // tell which growth failed, so it must not give budget back.)
        self.memory = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let total = self
            .table_elements
            .saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// The role-specific exports of a live instance.
enum Exports {
    Reconnect(reconnect::Guest),
    Health(health::Guest),
    Hooks(hooks::Guest),
}

struct Live {
    store: Store<StoreState>,
    exports: Exports,
}

/// A plugin instance with its limits; see the module docs.
pub(crate) struct Sandbox {
    plugin: Arc<LoadedPlugin>,
    /// The `config` table as JSON, for `init`.
    config: String,
    limits: Limits,
    grants: Grants,
    host: HostContext,
    live: Option<Live>,
}

/// Why a call produced no answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The plugin trapped, ran out of budget or time, or answered nonsense.
    Broken(String),
    /// `init` returned an error.
    Rejected(String),
}

impl Failure {
    pub(crate) fn reason(&self) -> String {
        match self {
            Self::Broken(reason) => reason.clone(),
            Self::Rejected(message) => format!("rejected its config: {message}"),
        }
    }
}

impl Sandbox {
    /// Instantiates the plugin and runs `describe` and `init`: a plugin that cannot do that
    /// is refused here, at load time, not on the first event.
    pub(crate) async fn start(
        plugin: Arc<LoadedPlugin>,
        spec: PluginSpec,
        host: HostContext,
    ) -> Result<(Self, types::PluginInfo), LoadError> {
        let mut sandbox = Self {
            plugin,
            config: spec.config,
            limits: spec.limits,
            grants: spec.grants,
            host,
            live: None,
        };
        let label = sandbox.plugin.label.clone();
        match sandbox.instantiate(true).await {
            Ok((live, info)) => {
                sandbox.live = Some(live);
                Ok((sandbox, info))
            }
            Err(Failure::Rejected(message)) => Err(LoadError::ConfigRejected {
                plugin: label,
                message,
            }),
            Err(Failure::Broken(detail)) => Err(LoadError::Start {
                plugin: label,
                detail,
            }),
        }
    }

    /// The limits.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Instantiates the plugin within `limits`, with no grants, and calls `describe` only
    /// (for `plugin inspect`, where the config is unknown).
    pub(crate) async fn describe(
        plugin: Arc<LoadedPlugin>,
        limits: Limits,
    ) -> Result<types::PluginInfo, LoadError> {
        let label = plugin.label.clone();
        let mut sandbox = Self {
            plugin,
            config: String::new(),
            limits,
            grants: Grants::default(),
            host: HostContext::default(),
            live: None,
        };
        sandbox
            .instantiate(false)
            .await
            .map(|(_, info)| info)
            .map_err(|failure| LoadError::Start {
                plugin: label,
                detail: failure.reason(),
            })
    }

    async fn instantiate(&mut self, init: bool) -> Result<(Live, types::PluginInfo), Failure> {
        let limits = self.limits;
        let cap = usize::try_from(limits.memory).unwrap_or(usize::MAX);
        let state = StoreState {
            // Deny-all: no preopens, env, args or network; stdio discarded.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter: StoreLimiter::new(cap),
            host: self.host.for_instance(&self.plugin.label, self.grants),
            ticks: 0,
            tick_budget: budget_ticks(limits.cpu),
        };
        let mut store = Store::new(self.plugin.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            state.ticks += 1;
            Ok(if state.ticks >= state.tick_budget {
                UpdateDeadline::Interrupt
            } else {
                // Yield so a busy plugin never holds a runtime thread for a whole tick.
                UpdateDeadline::Yield(1)
            })
        });
        arm(&mut store);
        let plugin = &self.plugin;
        let setup = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            let meta = plugin.plugin_exports.load(&mut store, &instance)?;
            let exports = match &plugin.role_exports {
                RoleIndices::Reconnect(i) => Exports::Reconnect(i.load(&mut store, &instance)?),
                RoleIndices::Health(i) => Exports::Health(i.load(&mut store, &instance)?),
                RoleIndices::Hooks(i) => Exports::Hooks(i.load(&mut store, &instance)?),
            };
            let info = meta.call_describe(&mut store).await?;
            let init = if init {
                meta.call_init(&mut store, &self.config).await?
            } else {
                Ok(())
            };
            wasmtime::Result::Ok((exports, info, init))
        };
        let outcome = tokio::time::timeout(limits.timeout, setup).await;
        match settle(&mut store, limits, outcome) {
            Ok((exports, info, Ok(()))) => {
                Ok((Live { store, exports }, convert::plugin_info(info)))
            }
            Ok((_, _, Err(message))) => Err(Failure::Rejected(convert::plugin_text(message))),
            Err(reason) => Err(Failure::Broken(reason)),
        }
    }

    /// The warm instance, instantiated again if the last one was dropped.
    async fn live(&mut self) -> Result<&mut Live, Failure> {
        let live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate(true).await?.0,
        };
        Ok(self.live.insert(live))
    }

    /// Asks a reconnect policy.
    pub(crate) async fn decide(
        &mut self,
        context: &types::DecisionContext,
        session: Option<types::SessionRef>,
    ) -> Result<types::Decision, Failure> {
        let limits = self.limits;
        let live = self.live().await?;
        live.store.data_mut().host.call_session = session;
        let Exports::Reconnect(guest) = &live.exports else {
            return Err(Failure::Broken("not a reconnect policy".into()));
        };
        arm(&mut live.store);
        let outcome =
            tokio::time::timeout(limits.timeout, guest.call_decide(&mut live.store, context)).await;
        let result = settle(&mut live.store, limits, outcome);
        self.keep_if(result)
    }

    /// Runs a health check.
    pub(crate) async fn check(
        &mut self,
        context: &types::ProbeContext,
    ) -> Result<types::ProbeOutcome, Failure> {
        let limits = self.limits;
        let live = self.live().await?;
        live.store.data_mut().host.call_session = None;
        let Exports::Health(guest) = &live.exports else {
            return Err(Failure::Broken("not a health check".into()));
        };
        arm(&mut live.store);
        let outcome =
            tokio::time::timeout(limits.timeout, guest.call_check(&mut live.store, context)).await;
        let result = settle(&mut live.store, limits, outcome);
        // Connections the probe left open are closed when its call ends.
        live.store.data_mut().host.close_all();
        self.keep_if(result)
    }

    /// Delivers one event to a hook.
    pub(crate) async fn on_event(
        &mut self,
        event: &types::TunnelEvent,
        session: Option<types::SessionRef>,
    ) -> Result<(), Failure> {
        let limits = self.limits;
        let live = self.live().await?;
        live.store.data_mut().host.call_session = session;
        let Exports::Hooks(guest) = &live.exports else {
            return Err(Failure::Broken("not an event hook".into()));
        };
        arm(&mut live.store);
        let outcome =
            tokio::time::timeout(limits.timeout, guest.call_on_event(&mut live.store, event)).await;
        let result = settle(&mut live.store, limits, outcome);
        self.keep_if(result)
    }

    /// Drops the instance (after a bad answer): the next call starts a fresh one.
    pub(crate) fn discard(&mut self) {
        self.live = None;
    }

    /// Drops the instance after a failure: it may be poisoned or mid-call.
    fn keep_if<R>(&mut self, result: Result<R, String>) -> Result<R, Failure> {
        result.map_err(|reason| {
            self.live = None;
            Failure::Broken(reason)
        })
    }
}

fn budget_ticks(cpu: Duration) -> u64 {
    u64::try_from(cpu.as_millis().div_ceil(TICK.as_millis()))
        .unwrap_or(u64::MAX)
        .max(1)
        // The first tick may come at once (the ticker is not aligned with the call).
        .saturating_add(1)
}

/// Resets the CPU budget before a call.
fn arm(store: &mut Store<StoreState>) {
    let state = store.data_mut();
    state.ticks = 0;
    state.host.begin_call();
    store.set_epoch_deadline(1);
}

/// Turns a call's outcome into an answer or a reason that names the limit that was hit.
fn settle<R>(
    store: &mut Store<StoreState>,
    limits: Limits,
    outcome: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
) -> Result<R, String> {
    let err = match outcome {
        Ok(Ok(answer)) => return Ok(answer),
        Ok(Err(err)) => err,
        Err(_) => {
            return Err(format!(
                "wall-clock timeout: no answer within {:?}",
                limits.timeout
            ));
        }
    };
    let state = store.data_mut();
    if std::mem::take(&mut state.limiter.exceeded) {
        return Err(format!(
            "memory limit of {} MiB exceeded",
            limits.memory >> 20
        ));
    }
    Err(match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("CPU budget of {:?} exhausted", limits.cpu),
        Some(Trap::StackOverflow) => "stack overflow".to_owned(),
        Some(Trap::UnreachableCodeReached) => {
            "trapped: unreachable instruction (a panic or abort in the plugin)".to_owned()
        }
        Some(trap) => format!("trapped: {trap}"),
        // The message may quote the plugin (its function names in a backtrace, an error it
        // raised): bounded and escaped like anything else it says.
        None => text::bounded(&format!("failed: {err:#}"), text::MAX_TEXT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_memory_cap_is_shared_by_every_memory_of_the_store() {
        let mut limiter = StoreLimiter::new(4 * MIB);
        // Three memories created at 1 MiB each: 3 MiB of 4.
        for _ in 0..3 {
            assert!(limiter.memory_growing(0, MIB, None).expect("fits"));
        }
        // Growing one by 1 MiB fits exactly; any further growth of any memory does not.
        assert!(limiter.memory_growing(MIB, 2 * MIB, None).expect("fits"));
        assert!(limiter.memory_growing(MIB, MIB + 65536, None).is_err());
        assert!(limiter.exceeded);
        assert_eq!(limiter.memory, 4 * MIB);
    }

    #[test]
    fn growth_past_a_memorys_own_maximum_costs_nothing() {
        let mut limiter = StoreLimiter::new(4 * MIB);
        assert!(
            !limiter
                .memory_growing(0, 3 * MIB, Some(MIB))
                .expect("refused")
        );
        assert_eq!(limiter.memory, 0);
        assert!(limiter.memory_growing(0, 4 * MIB, None).expect("fits"));
    }

    #[test]
    fn table_elements_are_capped_for_the_store() {
        let mut limiter = StoreLimiter::new(MIB);
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .expect("ok")
        );
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .expect("ok")
        );
        assert!(!limiter.table_growing(0, 1, None).expect("ok"));
    }
}
