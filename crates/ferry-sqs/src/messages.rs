//! Message actions: SendMessage(Batch), ReceiveMessage,
//! DeleteMessage(Batch), ChangeMessageVisibility(Batch).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::alarm;
use ferry_core::messaging::{Delivery, Queue};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::errors::{Code, SqsError, SqsResult, err, invalid_parameters, invalid_value, missing};
use crate::http::{Reply, SqsRequest};
use crate::message::{
    Attributes, SqsMessage, System, attributes_size, check_body, group_of, hex, md5_hex,
    md5_of_attributes, parse_attributes,
};
use crate::params::{Params, batch_entries, int_in, opt_str, req_str, string_list};
use crate::queues::{RedrivePolicy, parse_redrive};
use crate::store::DedupEntry;
use crate::{
    IN_FLIGHT_FIFO_MAX, IN_FLIGHT_STANDARD_MAX, QueueState, Receipt, SEND_ALARM_HOLD, Sqs, now_ms,
};

/// Bytes all the messages of one SendMessageBatch may add up to.
const BATCH_BYTES_MAX: usize = 1_048_576;
/// Messages a FIFO receive looks at to find ones of free groups.
const FIFO_SCAN_MAX: usize = 10_000;
/// FIFO group ids and deduplication ids: at most this many characters.
const FIFO_ID_CHARS_MAX: usize = 128;
/// Visibility timeout's upper bound (12 hours).
const VISIBILITY_MAX_S: i64 = 43_200;
/// A ReceiveRequestAttemptId can be retried for this long.
const RECEIVE_ATTEMPT_WINDOW: Duration = Duration::from_secs(300);
/// Receive attempts remembered per FIFO queue at most.
const RECEIVE_ATTEMPTS_MAX: usize = 10_000;

const SYSTEM_ATTRIBUTE_NAMES: &[&str] = &[
    "All",
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageDeduplicationId",
    "MessageGroupId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
];

/// A validated message, ready to be appended.
struct Prepared {
    message: SqsMessage,
    delay: Option<Duration>,
    md5_body: String,
    md5_attributes: Option<String>,
    md5_system: Option<String>,
    /// FIFO: the deduplication key (scope + id).
    dedup_key: Option<String>,
    size: usize,
}

fn fifo_id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= FIFO_ID_CHARS_MAX
        && s.chars().all(|c| c.is_ascii_graphic())
}

fn not_for_queue_type(param: &str, value: impl std::fmt::Display) -> SqsError {
    invalid_value(
        param,
        value,
        "The request include parameter that is not valid for this queue type",
    )
}

impl Sqs {
    fn prepare(&self, q: &QueueState, e: &Params, now: i64) -> SqsResult<Prepared> {
        let body = match e.get("MessageBody") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(missing("MessageBody")),
        };
        check_body(&body)?;
        let attributes = parse_attributes(e.get("MessageAttributes"), false)?;
        let system_attributes = parse_attributes(e.get("MessageSystemAttributes"), true)?;
        let size = body.len() + attributes_size(&attributes);
        let max = usize::try_from(q.attr_i64("MaximumMessageSize", 1_048_576)).unwrap_or(1_048_576);
        if size > max {
            return Err(invalid_parameters(format!(
                "Message must be shorter than {max} bytes."
            )));
        }
        let delay_param = int_in(e, "DelaySeconds", 0, 900).map_err(|_| {
            invalid_value(
                "DelaySeconds",
                e.get("DelaySeconds")
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                "DelaySeconds must be >= 0 and <= 900",
            )
        })?;
        let group = opt_str(e, "MessageGroupId").map(str::to_string);
        let dedup = opt_str(e, "MessageDeduplicationId").map(str::to_string);
        if let Some(g) = &group
            && !fifo_id_ok(g)
        {
            return Err(invalid_value(
                "MessageGroupId",
                g,
                "MessageGroupId can only include alphanumeric and punctuation characters. 1 to 128 in length",
            ));
        }
        let mut dedup_key = None;
        let mut dedup_id = None;
        let delay_s = if q.fifo {
            if let Some(d) = delay_param
                && d != 0
            {
                return Err(not_for_queue_type("DelaySeconds", d));
            }
            let Some(g) = &group else {
                return Err(missing("MessageGroupId"));
            };
            let id = match dedup {
                Some(d) => {
                    if !fifo_id_ok(&d) {
                        return Err(invalid_value(
                            "MessageDeduplicationId",
                            &d,
                            "MessageDeduplicationId can only include alphanumeric and punctuation characters. 1 to 128 in length",
                        ));
                    }
                    d
                }
                None if q.attr("ContentBasedDeduplication").as_deref() == Some("true") => {
                    hex(&Sha256::digest(body.as_bytes()))
                }
                None => {
                    return Err(invalid_parameters(
                        "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                    ));
                }
            };
            let scope = if q.attr("DeduplicationScope").as_deref() == Some("messageGroup") {
                g.as_str()
            } else {
                ""
            };
            dedup_key = Some(format!("{scope}\n{id}"));
            dedup_id = Some(id);
            q.attr_i64("DelaySeconds", 0)
        } else {
            if let Some(d) = dedup {
                return Err(not_for_queue_type("MessageDeduplicationId", d));
            }
            delay_param.unwrap_or_else(|| q.attr_i64("DelaySeconds", 0))
        };
        let trace_header = system_attributes
            .get("AWSTraceHeader")
            .and_then(|v| match &v.data {
                crate::message::AttrData::Str(s) => Some(s.clone()),
                crate::message::AttrData::Bin(_) => None,
            });
        let message = SqsMessage {
            body,
            attributes,
            system: System {
                message_id: uuid::Uuid::new_v4().to_string(),
                group_id: group,
                dedup_id,
                sequence: None,
                trace_header,
                sender_id: Some(self.config.account_id.clone()),
                dlq_source_arn: None,
            },
            sent_ms: now,
        };
        Ok(Prepared {
            md5_body: md5_hex(message.body.as_bytes()),
            md5_attributes: md5_of_attributes(&message.attributes),
            md5_system: md5_of_attributes(&system_attributes),
            message,
            delay: (delay_s > 0).then(|| Duration::from_secs(delay_s.unsigned_abs())),
            dedup_key,
            size,
        })
    }

    /// Appends prepared messages (in order, with one write to the queue's
    /// log), waits until they are durable, and answers each one's result.
    async fn send_prepared(
        &self,
        q: &QueueState,
        engine: &Queue,
        prepared: Vec<SqsResult<Prepared>>,
    ) -> Vec<SqsResult<Sent>> {
        let retention =
            Duration::from_secs(q.attr_i64("MessageRetentionPeriod", 345_600).unsigned_abs());
        let now = now_ms();
        let window_ms = i64::try_from(self.config.dedup_window.as_millis()).unwrap_or(300_000);
        // Per message: its answer so far, and its message id if it is among
        // the appended (duplicates and invalid entries are not).
        let mut results: Vec<(SqsResult<Sent>, Option<String>)> =
            Vec::with_capacity(prepared.len());
        let mut to_send = Vec::new();
        let mut new_dedup = Vec::new();
        let sent = {
            // FIFO: deduplication and sequence numbers are decided, and the
            // append made, in one step per queue, so sequence numbers follow
            // the log's order. A new deduplication entry is taken before the
            // append (a duplicate later in the same batch must see it) and
            // dropped again if the append fails.
            let mut rt = q.runtime();
            if q.fifo {
                while let Some((exp, _)) = rt.dedup_expiry.front()
                    && *exp <= now
                {
                    if let Some((_, key)) = rt.dedup_expiry.pop_front()
                        && rt.dedup.get(&key).is_some_and(|e| e.exp <= now)
                    {
                        rt.dedup.remove(&key);
                    }
                }
            }
            for p in prepared {
                let mut p = match p {
                    Ok(p) => p,
                    Err(e) => {
                        results.push((Err(e), None));
                        continue;
                    }
                };
                if let Some(key) = &p.dedup_key {
                    // An entry not yet dropped (the clock stepped back, or
                    // it was restored out of order) but expired is no
                    // duplicate.
                    if let Some(prev) = rt.dedup.get(key).filter(|e| e.exp > now) {
                        let r = p.answer(prev.id.clone(), Some(prev.seq.clone()));
                        results.push((Ok(r), None));
                        continue;
                    }
                    let floor = u128::try_from(now).unwrap_or(0) * 100_000_000;
                    let seq = rt.last_sequence.saturating_add(1).max(floor);
                    rt.last_sequence = seq;
                    let seq = format!("{seq:020}");
                    let entry = DedupEntry {
                        q: q.incarnation.clone(),
                        k: key.clone(),
                        id: p.message.system.message_id.clone(),
                        seq: seq.clone(),
                        exp: now + window_ms,
                    };
                    rt.dedup_expiry.push_back((entry.exp, key.clone()));
                    rt.dedup.insert(key.clone(), entry.clone());
                    new_dedup.push(entry);
                    p.message.system.sequence = Some(seq);
                }
                let r = p.answer(
                    p.message.system.message_id.clone(),
                    p.message.system.sequence.clone(),
                );
                to_send.push((p.message.to_engine(&q.name, Some(retention)), p.delay));
                let id = p.message.system.message_id;
                results.push((Ok(r), Some(id)));
            }
            if to_send.is_empty() {
                Ok(Vec::new())
            } else {
                engine.send_all(to_send)
            }
        };
        let mut sent = match sent {
            Ok(sent) => sent.into_iter(),
            Err(e) => {
                let e = SqsError::from(e);
                for (r, sent_id) in &mut results {
                    if sent_id.is_some() {
                        *r = Err(e.clone());
                    }
                }
                Vec::new().into_iter()
            }
        };
        let mut out = Vec::with_capacity(results.len());
        let mut lost = Vec::new();
        for (r, sent_id) in results {
            let Some(id) = sent_id else {
                out.push(r);
                continue;
            };
            let stored = match (r, sent.next()) {
                (Ok(v), Some(Ok(published))) => published
                    .pending
                    .durable()
                    .await
                    .map(|()| v)
                    .map_err(SqsError::from),
                (Ok(_), Some(Err(e))) => Err(SqsError::from(e)),
                // The append failed as a whole: `r` holds its error.
                (r, _) => r,
            };
            if stored.is_err() {
                // Not stored: a retry must not be taken for a duplicate of it.
                lost.push(id);
            }
            out.push(stored);
        }
        if !lost.is_empty() {
            new_dedup.retain(|e| !lost.contains(&e.id));
            q.runtime().dedup.retain(|_, e| !lost.contains(&e.id));
        }
        if !new_dedup.is_empty() {
            // Off the runtime: the fsync would hold a worker thread.
            let store = self.store.clone();
            let written = tokio::task::spawn_blocking(move || store.append_dedup(&new_dedup)).await;
            let e = match written {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = e {
                tracing::warn!(queue = %q.name, error = %e, "could not persist FIFO deduplication entries");
            }
        }
        out
    }

    /// During a resource alarm (low disk, high memory) a send waits for it
    /// to clear, as RabbitMQ holds a blocked publisher, for at most
    /// `SEND_ALARM_HOLD`; then it is throttled, which SDKs retry with
    /// backoff. Receives and deletes are never held: consumers drain.
    async fn hold_during_alarm(&self) -> SqsResult<()> {
        let mut alarms = self.config.alarms.clone();
        let Some(why) = alarms.borrow().blocked_reason() else {
            return Ok(());
        };
        if alarm::wait_until_clear(&mut alarms, Some(SEND_ALARM_HOLD)).await {
            return Ok(());
        }
        Err(err(
            Code::RequestThrottled,
            format!(
                "Broker {why}: sends are throttled until the alarm clears (disk_free_limit, memory_high_watermark)."
            ),
        ))
    }

    pub(crate) async fn send_message(&self, req: &SqsRequest, p: &Params) -> SqsResult<Reply> {
        let q = self.queue_of(req, p)?;
        let engine = self.engine_queue(&q.name)?;
        self.hold_during_alarm().await?;
        let prepared = self.prepare(&q, p, now_ms())?;
        let mut results = self.send_prepared(&q, &engine, vec![Ok(prepared)]).await;
        let sent = results
            .pop()
            .unwrap_or_else(|| Err(crate::errors::internal("no result")))?;
        req.reply(&sent)
    }

    pub(crate) async fn send_message_batch(
        &self,
        req: &SqsRequest,
        p: &Params,
    ) -> SqsResult<Reply> {
        let q = self.queue_of(req, p)?;
        let engine = self.engine_queue(&q.name)?;
        let entries = batch_entries(p, "SendMessageBatchRequestEntry")?;
        self.hold_during_alarm().await?;
        let now = now_ms();
        let prepared: Vec<SqsResult<Prepared>> =
            entries.iter().map(|e| self.prepare(&q, e, now)).collect();
        let total: usize = prepared
            .iter()
            .map(|r| match r {
                Ok(p) => p.size,
                Err(_) => 0,
            })
            .sum::<usize>()
            + entries
                .iter()
                .zip(&prepared)
                .filter(|(_, r)| r.is_err())
                .map(|(e, _)| opt_str(e, "MessageBody").map_or(0, str::len))
                .sum::<usize>();
        if total > BATCH_BYTES_MAX {
            return Err(err(
                Code::BatchRequestTooLong,
                format!(
                    "Batch requests cannot be longer than {BATCH_BYTES_MAX} bytes. You have sent {total} bytes."
                ),
            ));
        }
        let results = self.send_prepared(&q, &engine, prepared).await;
        let mut answer = BatchResult::default();
        for (e, r) in entries.iter().zip(results) {
            let id = opt_str(e, "Id").unwrap_or("");
            match r {
                Ok(sent) => answer.successful.push(Sent {
                    id: Some(id.to_string()),
                    ..sent
                }),
                Err(e) => answer.failed.push(Failed::of(id, &e)),
            }
        }
        req.reply(&answer)
    }

    pub(crate) async fn receive_message(
        self: &Arc<Self>,
        req: &SqsRequest,
        p: &Params,
    ) -> SqsResult<Reply> {
        let q = self.queue_of(req, p)?;
        let max = int_in(p, "MaxNumberOfMessages", 1, 10)?.unwrap_or(1);
        let visibility = int_in(p, "VisibilityTimeout", 0, VISIBILITY_MAX_S)?
            .unwrap_or_else(|| q.attr_i64("VisibilityTimeout", 30));
        let wait = int_in(p, "WaitTimeSeconds", 0, 20)?
            .unwrap_or_else(|| q.attr_i64("ReceiveMessageWaitTimeSeconds", 0));
        let mut names = string_list(p, "AttributeNames");
        names.extend(string_list(p, "MessageSystemAttributeNames"));
        for n in &names {
            if !SYSTEM_ATTRIBUTE_NAMES.contains(&n.as_str())
                && !crate::queues::is_queue_attribute(n)
            {
                return Err(err(
                    Code::InvalidAttributeName,
                    format!("Unknown Attribute {n}."),
                ));
            }
        }
        let filters = string_list(p, "MessageAttributeNames");
        let engine = self.engine_queue(&q.name)?;
        // Standard queues ignore it, as SQS does.
        let attempt = match opt_str(p, "ReceiveRequestAttemptId") {
            Some(a) if q.fifo => {
                if !fifo_id_ok(a) {
                    return Err(invalid_value(
                        "ReceiveRequestAttemptId",
                        a,
                        "ReceiveRequestAttemptId can only include alphanumeric and punctuation characters. 1 to 128 in length",
                    ));
                }
                Some(a.to_string())
            }
            _ => None,
        };
        if let Some(a) = &attempt
            && let Some(response) = retry_attempt(&q, &engine, a, visibility)
        {
            return Ok(Reply::Value(response));
        }
        let deadline = Instant::now() + Duration::from_secs(wait.unsigned_abs());
        let limit = if q.fifo {
            IN_FLIGHT_FIFO_MAX
        } else {
            IN_FLIGHT_STANDARD_MAX
        };
        let view = View {
            names: &names,
            filters: &filters,
        };
        loop {
            let ready = engine.receivers().notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let released = q.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if engine.counts().in_flight >= limit {
                return Err(err(
                    Code::OverLimit,
                    format!("Too many messages in flight: at most {limit} for this queue."),
                ));
            }
            let deliveries = self
                .take(&q, &engine, usize::try_from(max).unwrap_or(1), visibility)
                .await?;
            let took = !deliveries.is_empty();
            let mut out = Vec::new();
            let mut returned = Vec::new();
            // Read once per take, not per message: it is JSON text.
            let redrive = if took {
                q.attr("RedrivePolicy").and_then(|v| parse_redrive(&v))
            } else {
                None
            };
            for d in deliveries {
                let key = (d.id, d.delivery_count);
                if let Some(m) = self.render(&q, &engine, d, &view, redrive.as_ref()).await? {
                    out.push(m);
                    returned.push(key);
                }
            }
            if !out.is_empty() {
                let response = ReceiveResult { messages: out };
                if let Some(a) = attempt {
                    let value = serde_json::to_value(&response).map_err(crate::errors::internal)?;
                    remember_attempt(&q, a, returned, value);
                }
                return req.reply(&response);
            }
            if took {
                // Everything taken was dropped or dead-lettered: look again.
                continue;
            }
            if Instant::now() >= deadline {
                return req.reply(&ReceiveResult::default());
            }
            tokio::select! {
                _ = &mut ready => {}
                _ = &mut released => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// Takes deliveries from the engine; FIFO queues pass over the message
    /// groups with a message in flight.
    async fn take(
        &self,
        q: &QueueState,
        engine: &Queue,
        max: usize,
        visibility_s: i64,
    ) -> SqsResult<Vec<Delivery>> {
        let visibility = Duration::from_secs(visibility_s.unsigned_abs());
        if !q.fifo {
            let got = engine.receive_batch(visibility, max, max, &mut |_| true)?;
            if visibility.is_zero() {
                // Visible again at once (the engine's timer would take a tick).
                for d in &got {
                    let _ = engine.set_visibility(d.id, Duration::ZERO);
                }
            }
            return Ok(got);
        }
        let _one_at_a_time = q.fifo_receive.lock().await;
        let locked: HashSet<Vec<u8>> = {
            let mut rt = q.runtime();
            rt.groups.retain(|_, ids| {
                ids.retain(|id| engine.in_flight_count(*id).is_some());
                !ids.is_empty()
            });
            rt.groups.keys().map(|g| g.as_bytes().to_vec()).collect()
        };
        let got = engine.receive_batch(visibility, max, FIFO_SCAN_MAX, &mut |m| {
            !locked.contains(group_of(m))
        })?;
        if visibility.is_zero() {
            for d in &got {
                let _ = engine.set_visibility(d.id, Duration::ZERO);
            }
            return Ok(got);
        }
        let mut rt = q.runtime();
        for d in &got {
            let g = String::from_utf8_lossy(group_of(&d.message)).into_owned();
            rt.groups.entry(g).or_default().push(d.id);
        }
        Ok(got)
    }

    /// One received message as SQS shows it; `None` when it was purged or
    /// moved to the dead-letter queue of `redrive` instead.
    async fn render(
        &self,
        q: &QueueState,
        engine: &Queue,
        d: Delivery,
        view: &View<'_>,
        redrive: Option<&RedrivePolicy>,
    ) -> SqsResult<Option<Received>> {
        let id = d.id;
        let sm = SqsMessage::from_engine(&d.message, || derived_id(&q.incarnation, id));
        let purged_before = q.runtime().purged_before_ms;
        if sm.sent_ms < purged_before {
            let _ = engine.ack(d.id);
            q.forget_delivery(d.id);
            return Ok(None);
        }
        if let Some(rp) = redrive
            && d.delivery_count > rp.max_receive_count
            && self
                .move_to_dlq(q, engine, &rp.target_arn, &sm, d.id)
                .await?
        {
            return Ok(None);
        }
        let now = now_ms();
        let first = q.record_first_receive(d.id, now);
        let attributes =
            view.system_attributes(&sm, d.delivery_count, first, &self.config.account_id);
        let selected = view.message_attributes(&sm.attributes);
        Ok(Some(Received {
            receipt_handle: Receipt {
                id: d.id,
                count: d.delivery_count,
            }
            .encode(&q.incarnation),
            md5_of_body: md5_hex(sm.body.as_bytes()),
            md5_of_message_attributes: md5_of_attributes(&selected),
            message_attributes: selected
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
            attributes,
            message_id: sm.system.message_id,
            body: sm.body,
        }))
    }

    pub(crate) fn delete_message(&self, req: &SqsRequest, p: &Params) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let engine = self.engine_queue(&q.name)?;
        let handle = req_str(p, "ReceiptHandle")?;
        let deleted = self.delete_one(&q, &engine, handle);
        engine.write_journal();
        deleted?;
        Ok(json!({}))
    }

    /// Deletes one received message; the caller writes the queue's journal
    /// (`Queue::write_journal`) once for the request before answering.
    fn delete_one(&self, q: &QueueState, engine: &Queue, handle: &str) -> SqsResult<()> {
        let r = Receipt::decode(handle, q)?;
        // A handle of an earlier receive (the message came back and was
        // received again) succeeds without deleting, as SQS allows.
        if engine.in_flight_count(r.id) == Some(r.count) {
            engine.ack_journal_later(r.id)?;
            q.forget_delivery(r.id);
            if q.fifo {
                q.released.notify_waiters();
            }
        }
        Ok(())
    }

    pub(crate) fn delete_message_batch(&self, req: &SqsRequest, p: &Params) -> SqsResult<Reply> {
        let q = self.queue_of(req, p)?;
        let engine = self.engine_queue(&q.name)?;
        let entries = batch_entries(p, "DeleteMessageBatchRequestEntry")?;
        let mut answer = BatchResult::default();
        for e in entries {
            let id = opt_str(e, "Id").unwrap_or("");
            let r = req_str(e, "ReceiptHandle").and_then(|h| self.delete_one(&q, &engine, h));
            match r {
                Ok(()) => answer.successful.push(EntryId { id }),
                Err(e) => answer.failed.push(Failed::of(id, &e)),
            }
        }
        // One journal write for the batch, before the answer: a deletion
        // answered survives a crash of the process.
        engine.write_journal();
        req.reply(&answer)
    }

    fn change_one(&self, q: &QueueState, engine: &Queue, e: &Params) -> SqsResult<()> {
        let handle = req_str(e, "ReceiptHandle")?;
        let Some(secs) = int_in(e, "VisibilityTimeout", 0, VISIBILITY_MAX_S)? else {
            return Err(missing("VisibilityTimeout"));
        };
        let r = Receipt::decode(handle, q)?;
        if engine.in_flight_count(r.id) != Some(r.count) {
            return Err(err(
                Code::MessageNotInflight,
                "Message does not exist or is not available for visibility timeout change.",
            ));
        }
        engine.set_visibility(r.id, Duration::from_secs(secs.unsigned_abs()))?;
        q.forget_attempts_of(r.id);
        if secs == 0 && q.fifo {
            q.released.notify_waiters();
        }
        Ok(())
    }

    pub(crate) fn change_message_visibility(
        &self,
        req: &SqsRequest,
        p: &Params,
    ) -> SqsResult<Value> {
        let q = self.queue_of(req, p)?;
        let engine = self.engine_queue(&q.name)?;
        self.change_one(&q, &engine, p)?;
        Ok(json!({}))
    }

    pub(crate) fn change_message_visibility_batch(
        &self,
        req: &SqsRequest,
        p: &Params,
    ) -> SqsResult<Reply> {
        let q = self.queue_of(req, p)?;
        let engine = self.engine_queue(&q.name)?;
        let entries = batch_entries(p, "ChangeMessageVisibilityBatchRequestEntry")?;
        let mut answer = BatchResult::default();
        for e in entries {
            let id = opt_str(e, "Id").unwrap_or("");
            match self.change_one(&q, &engine, e) {
                Ok(()) => answer.successful.push(EntryId { id }),
                Err(e) => answer.failed.push(Failed::of(id, &e)),
            }
        }
        req.reply(&answer)
    }
}

/// The answer to a retried ReceiveRequestAttemptId: the same messages and
/// receipt handles, with their visibility timeout started again, while the
/// attempt is recent and none of its messages was deleted, changed or
/// returned to the queue.
fn retry_attempt(
    q: &QueueState,
    engine: &Queue,
    attempt: &str,
    visibility_s: i64,
) -> Option<Value> {
    let mut rt = q.runtime();
    rt.attempts
        .retain(|_, a| a.at.elapsed() < RECEIVE_ATTEMPT_WINDOW);
    let a = rt.attempts.get(attempt)?;
    let unchanged = a
        .deliveries
        .iter()
        .all(|(id, count)| engine.in_flight_count(*id) == Some(*count));
    if !unchanged {
        rt.attempts.remove(attempt);
        return None;
    }
    let visibility = Duration::from_secs(visibility_s.unsigned_abs());
    for (id, _) in &a.deliveries {
        let _ = engine.set_visibility(*id, visibility);
    }
    Some(a.response.clone())
}

fn remember_attempt(q: &QueueState, attempt: String, deliveries: Vec<(u64, u32)>, response: Value) {
    let mut rt = q.runtime();
    if rt.attempts.len() >= RECEIVE_ATTEMPTS_MAX {
        rt.attempts
            .retain(|_, a| a.at.elapsed() < RECEIVE_ATTEMPT_WINDOW);
        if rt.attempts.len() >= RECEIVE_ATTEMPTS_MAX {
            // Retries are a convenience: forgetting old ones is safe.
            rt.attempts.clear();
        }
    }
    rt.attempts.insert(
        attempt,
        crate::Attempt {
            at: Instant::now(),
            deliveries,
            response,
        },
    );
}

/// The answer to a send, and to each entry of a batch send (with its `Id`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Sent {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    message_id: String,
    #[serde(rename = "MD5OfMessageBody")]
    md5_of_message_body: String,
    #[serde(
        rename = "MD5OfMessageAttributes",
        skip_serializing_if = "Option::is_none"
    )]
    md5_of_message_attributes: Option<String>,
    #[serde(
        rename = "MD5OfMessageSystemAttributes",
        skip_serializing_if = "Option::is_none"
    )]
    md5_of_message_system_attributes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_number: Option<String>,
}

impl Prepared {
    /// The answer for this message, stored as `message_id` (a FIFO
    /// duplicate answers the id and sequence number of the original).
    fn answer(&self, message_id: String, sequence_number: Option<String>) -> Sent {
        Sent {
            id: None,
            message_id,
            md5_of_message_body: self.md5_body.clone(),
            md5_of_message_attributes: self.md5_attributes.clone(),
            md5_of_message_system_attributes: self.md5_system.clone(),
            sequence_number,
        }
    }
}

/// One received message as SQS shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Received {
    message_id: String,
    receipt_handle: String,
    #[serde(rename = "MD5OfBody")]
    md5_of_body: String,
    body: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<&'static str, String>,
    #[serde(
        rename = "MD5OfMessageAttributes",
        skip_serializing_if = "Option::is_none"
    )]
    md5_of_message_attributes: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    message_attributes: Map<String, Value>,
}

/// A ReceiveMessage answer: `{}` when nothing came.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveResult {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    messages: Vec<Received>,
}

/// `{"Successful": [...], "Failed": [...]}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct BatchResult<T> {
    successful: Vec<T>,
    failed: Vec<Failed>,
}

impl<T> Default for BatchResult<T> {
    fn default() -> Self {
        BatchResult {
            successful: Vec::new(),
            failed: Vec::new(),
        }
    }
}

/// A successful entry of a delete or visibility batch.
#[derive(Debug, Serialize)]
struct EntryId<'a> {
    #[serde(rename = "Id")]
    id: &'a str,
}

/// A failed entry of a batch.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Failed {
    id: String,
    sender_fault: bool,
    code: &'static str,
    message: String,
}

impl Failed {
    fn of(id: &str, e: &SqsError) -> Failed {
        Failed {
            id: id.to_string(),
            sender_fault: e.code.fault() == "Sender",
            code: e.code.query_code(),
            message: e.message.clone(),
        }
    }
}

/// An integer as text, without the formatting machinery of `to_string`.
fn decimal(n: impl itoa::Integer) -> String {
    itoa::Buffer::new().format(n).to_owned()
}

/// A stable MessageId for a message that has none of its own (published
/// over AMQP without a message-id): from the queue and its position.
fn derived_id(incarnation: &str, id: u64) -> String {
    let digest = Sha256::digest(format!("{incarnation}:{id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// What a ReceiveMessage asked to see.
struct View<'a> {
    names: &'a [String],
    filters: &'a [String],
}

impl View<'_> {
    fn wants(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == "All" || n == name)
    }

    fn system_attributes(
        &self,
        sm: &SqsMessage,
        receive_count: u32,
        first_receive_ms: i64,
        account: &str,
    ) -> BTreeMap<&'static str, String> {
        let mut out = BTreeMap::new();
        // Values are made only for the names asked for: most receives ask
        // for none.
        let mut put = |k: &'static str, v: &dyn Fn() -> Option<String>| {
            if self.wants(k)
                && let Some(v) = v()
            {
                out.insert(k, v);
            }
        };
        let system = &sm.system;
        put("SenderId", &|| {
            Some(
                system
                    .sender_id
                    .clone()
                    .unwrap_or_else(|| account.to_string()),
            )
        });
        put("SentTimestamp", &|| Some(decimal(sm.sent_ms)));
        put("ApproximateReceiveCount", &|| Some(decimal(receive_count)));
        put("ApproximateFirstReceiveTimestamp", &|| {
            Some(decimal(first_receive_ms))
        });
        put("SequenceNumber", &|| system.sequence.clone());
        put("MessageDeduplicationId", &|| system.dedup_id.clone());
        put("MessageGroupId", &|| system.group_id.clone());
        put("AWSTraceHeader", &|| system.trace_header.clone());
        put("DeadLetterQueueSourceArn", &|| {
            system.dlq_source_arn.clone()
        });
        out
    }

    /// The message attributes selected by MessageAttributeNames: `All` or
    /// `.*` for all, `prefix.*` for those starting with `prefix.`, or names.
    fn message_attributes(&self, a: &Attributes) -> Attributes {
        a.iter()
            .filter(|(name, _)| {
                self.filters.iter().any(|f| {
                    f == "All"
                        || f == ".*"
                        || f == *name
                        || f.strip_suffix("*")
                            .is_some_and(|prefix| prefix.ends_with('.') && name.starts_with(prefix))
                })
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
