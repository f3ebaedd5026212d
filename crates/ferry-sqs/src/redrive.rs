//! Dead-letter queues: moving a message past its queue's maxReceiveCount to
//! the dead-letter target (on the receive that would exceed it, as SQS
//! does), and message move tasks (StartMessageMoveTask and friends) that
//! move messages back to their source queue or to a given destination.
//!
//! A move is send-then-delete: the copy is durable in the destination
//! before the original is settled, so a crash in between duplicates a
//! message but never loses one (SQS is at-least-once too).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use ferry_core::messaging::Queue;
use serde_json::{Map, Value, json};

use crate::errors::{Code, SqsResult, err, invalid_value, missing};
use crate::message::SqsMessage;
use crate::params::{Params, int_in, opt_str, req_str};
use crate::queues::parse_redrive;
use crate::{QueueState, Sqs, now_ms};

/// Messages per second a move task may be limited to, at most.
const MOVE_RATE_MAX: i64 = 500;
/// Finished tasks remembered per source queue.
const TASKS_KEPT_PER_SOURCE: usize = 10;
/// How long a move task holds a message while copying it.
const MOVE_VISIBILITY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Running,
    Completed,
    Cancelling,
    Cancelled,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Completed => "COMPLETED",
            Status::Cancelling => "CANCELLING",
            Status::Cancelled => "CANCELLED",
            Status::Failed => "FAILED",
        }
    }
}

#[derive(Debug)]
pub(crate) struct MoveTask {
    handle: String,
    source_arn: String,
    source: String,
    destination_arn: Option<String>,
    rate: Option<i64>,
    started_ms: i64,
    to_move: u64,
    moved: AtomicU64,
    state: Mutex<(Status, Option<String>)>,
    cancel: AtomicBool,
}

impl MoveTask {
    fn status(&self) -> (Status, Option<String>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn finish(&self, status: Status, reason: Option<String>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (status, reason);
    }

    fn to_json(&self) -> Value {
        let (status, reason) = self.status();
        let mut m = Map::new();
        if status == Status::Running {
            m.insert("TaskHandle".into(), Value::String(self.handle.clone()));
        }
        m.insert("Status".into(), Value::String(status.as_str().into()));
        m.insert("SourceArn".into(), Value::String(self.source_arn.clone()));
        if let Some(d) = &self.destination_arn {
            m.insert("DestinationArn".into(), Value::String(d.clone()));
        }
        if let Some(r) = self.rate {
            m.insert("MaxNumberOfMessagesPerSecond".into(), json!(r));
        }
        m.insert(
            "ApproximateNumberOfMessagesMoved".into(),
            json!(self.moved.load(Ordering::Relaxed)),
        );
        m.insert(
            "ApproximateNumberOfMessagesToMove".into(),
            json!(self.to_move),
        );
        if let Some(r) = reason {
            m.insert("FailureReason".into(), Value::String(r));
        }
        m.insert("StartedTimestamp".into(), json!(self.started_ms));
        Value::Object(m)
    }
}

impl Sqs {
    /// Copies a message to `target_arn`'s queue and settles it here;
    /// `false` when the target is gone (the message is delivered instead).
    pub(crate) async fn move_to_dlq(
        &self,
        q: &QueueState,
        engine: &Queue,
        target_arn: &str,
        sm: &SqsMessage,
        id: u64,
    ) -> SqsResult<bool> {
        let Some(dlq) = self
            .name_of_arn(target_arn)
            .and_then(|n| self.queues_read().get(n).cloned())
        else {
            return Ok(false);
        };
        let mut moved = sm.clone();
        moved.system.dlq_source_arn = Some(self.arn(&q.name));
        self.copy_to(&dlq, &moved).await?;
        let _ = engine.ack(id);
        q.forget_delivery(id);
        Ok(true)
    }

    /// Appends a copy of a message to a queue and waits until it is durable.
    /// The message keeps its id and SentTimestamp; its retention runs from
    /// when it was first sent, as in SQS.
    async fn copy_to(&self, dest: &QueueState, sm: &SqsMessage) -> SqsResult<()> {
        let engine = self.engine_queue(&dest.name)?;
        let retention_ms = dest.attr_i64("MessageRetentionPeriod", 345_600) * 1000;
        let left = (retention_ms - (now_ms() - sm.sent_ms)).max(1000);
        let message = sm.to_engine(&dest.name, Some(Duration::from_millis(left.unsigned_abs())));
        let published = engine.send(message, None)?;
        published.pending.durable().await?;
        Ok(())
    }

    pub(crate) fn start_message_move_task(self: &Arc<Self>, p: &Params) -> SqsResult<Value> {
        let source_arn = req_str(p, "SourceArn")?.to_string();
        let not_found = |what: &str| {
            err(
                Code::ResourceNotFound,
                format!("The resource that you specified for the {what} parameter doesn't exist."),
            )
        };
        let source = self
            .name_of_arn(&source_arn)
            .and_then(|n| self.queues_read().get(n).cloned())
            .ok_or_else(|| not_found("SourceArn"))?;
        let destination_arn = opt_str(p, "DestinationArn")
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let Some(d) = &destination_arn
            && self
                .name_of_arn(d)
                .and_then(|n| self.queues_read().get(n).cloned())
                .is_none()
        {
            return Err(not_found("DestinationArn"));
        }
        let rate = int_in(p, "MaxNumberOfMessagesPerSecond", 1, MOVE_RATE_MAX)?;
        let is_dlq = self.queues_read().values().any(|q| {
            q.attr("RedrivePolicy")
                .and_then(|rp| parse_redrive(&rp))
                .is_some_and(|rp| rp.target_arn == source_arn)
        });
        if !is_dlq {
            return Err(invalid_value(
                "SourceArn",
                &source_arn,
                "Source queue must be configured as a Dead Letter Queue",
            ));
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if tasks
            .iter()
            .any(|t| t.source_arn == source_arn && t.status().0 == Status::Running)
        {
            return Err(err(
                Code::UnsupportedOperation,
                "There is already a task running. Only one active task is allowed for a source queue arn at a given time.",
            ));
        }
        let to_move = self.engine_queue(&source.name)?.counts().ready;
        let handle = base64::engine::general_purpose::STANDARD.encode(
            json!({
                "taskId": uuid::Uuid::new_v4().to_string(),
                "sourceArn": source_arn,
            })
            .to_string(),
        );
        let task = Arc::new(MoveTask {
            handle: handle.clone(),
            source_arn: source_arn.clone(),
            source: source.name.clone(),
            destination_arn,
            rate,
            started_ms: now_ms(),
            to_move,
            moved: AtomicU64::new(0),
            state: Mutex::new((Status::Running, None)),
            cancel: AtomicBool::new(false),
        });
        // Forget the oldest finished tasks of this source.
        let mut finished: Vec<usize> = tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.source_arn == source_arn && t.status().0 != Status::Running)
            .map(|(i, _)| i)
            .collect();
        while finished.len() >= TASKS_KEPT_PER_SOURCE {
            let i = finished.remove(0);
            tasks.remove(i);
            for f in finished.iter_mut() {
                *f -= 1;
            }
        }
        tasks.push(task.clone());
        drop(tasks);
        let sqs = self.clone();
        tokio::spawn(async move { sqs.run_move_task(task).await });
        Ok(json!({ "TaskHandle": handle }))
    }

    async fn run_move_task(self: Arc<Self>, task: Arc<MoveTask>) {
        let pause = task
            .rate
            .map(|r| Duration::from_secs(1) / u32::try_from(r).unwrap_or(1));
        loop {
            if task.cancel.load(Ordering::Relaxed) {
                task.finish(Status::Cancelled, None);
                return;
            }
            if task.moved.load(Ordering::Relaxed) >= task.to_move {
                task.finish(Status::Completed, None);
                return;
            }
            let Some(source) = self.queues_read().get(&task.source).cloned() else {
                task.finish(Status::Failed, Some("The source queue was deleted.".into()));
                return;
            };
            let Ok(engine) = self.engine_queue(&source.name) else {
                task.finish(Status::Failed, Some("The source queue was deleted.".into()));
                return;
            };
            let batch = if pause.is_some() { 1 } else { 10 };
            let deliveries =
                match engine.receive_batch(MOVE_VISIBILITY, batch, batch, &mut |_| true) {
                    Ok(d) => d,
                    Err(e) => {
                        task.finish(Status::Failed, Some(e.to_string()));
                        return;
                    }
                };
            if deliveries.is_empty() {
                task.finish(Status::Completed, None);
                return;
            }
            for d in deliveries {
                let sm = SqsMessage::from_engine(&d.message, || uuid::Uuid::new_v4().to_string());
                let dest_arn = task
                    .destination_arn
                    .clone()
                    .or_else(|| sm.system.dlq_source_arn.clone());
                let dest = dest_arn
                    .as_deref()
                    .and_then(|a| self.name_of_arn(a))
                    .and_then(|n| self.queues_read().get(n).cloned());
                let Some(dest) = dest else {
                    let _ = engine.set_visibility(d.id, Duration::ZERO);
                    task.finish(
                        Status::Failed,
                        Some(format!(
                            "Message {} has no source queue to go back to; give a DestinationArn.",
                            sm.system.message_id
                        )),
                    );
                    return;
                };
                let mut back = sm.clone();
                back.system.dlq_source_arn = None;
                if let Err(e) = self.copy_to(&dest, &back).await {
                    let _ = engine.set_visibility(d.id, Duration::ZERO);
                    task.finish(Status::Failed, Some(e.message));
                    return;
                }
                let _ = engine.ack(d.id);
                source.forget_delivery(d.id);
                task.moved.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = pause {
                    tokio::time::sleep(p).await;
                }
            }
        }
    }

    pub(crate) fn list_message_move_tasks(&self, p: &Params) -> SqsResult<Value> {
        let source_arn = req_str(p, "SourceArn")?;
        if self
            .name_of_arn(source_arn)
            .and_then(|n| self.queues_read().get(n).cloned())
            .is_none()
        {
            return Err(err(
                Code::ResourceNotFound,
                "The resource that you specified for the SourceArn parameter doesn't exist.",
            ));
        }
        let max = int_in(p, "MaxResults", 1, 10)?.unwrap_or(1);
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let results: Vec<Value> = tasks
            .iter()
            .rev()
            .filter(|t| t.source_arn == source_arn)
            .take(usize::try_from(max).unwrap_or(1))
            .map(|t| t.to_json())
            .collect();
        Ok(json!({ "Results": results }))
    }

    pub(crate) fn cancel_message_move_task(&self, p: &Params) -> SqsResult<Value> {
        let Some(handle) = opt_str(p, "TaskHandle").filter(|h| !h.is_empty()) else {
            return Err(missing("TaskHandle"));
        };
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let Some(task) = tasks.iter().find(|t| t.handle == handle) else {
            return Err(err(Code::ResourceNotFound, "Task does not exist."));
        };
        if task.status().0 != Status::Running {
            return Err(err(
                Code::ResourceNotFound,
                "Only active tasks can be cancelled.",
            ));
        }
        task.cancel.store(true, Ordering::Relaxed);
        task.finish(Status::Cancelling, None);
        Ok(json!({
            "ApproximateNumberOfMessagesMoved": task.moved.load(Ordering::Relaxed)
        }))
    }

    /// A queue was deleted: its tasks stop.
    pub(crate) fn cancel_tasks_of(&self, arn: &str) {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for t in tasks.iter() {
            if t.source_arn == arn || t.destination_arn.as_deref() == Some(arn) {
                t.cancel.store(true, Ordering::Relaxed);
            }
        }
    }
}
