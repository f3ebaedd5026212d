//! `ferry group list|describe|reset-offsets|delete`.

use std::collections::{BTreeMap, BTreeSet};

use clap::{Args, Subcommand};
use ferry_core::group::reset::{ResetTarget, reset_offset};
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::{DeleteGroupsRequest, DescribeGroupsRequest, ListGroupsRequest};
use serde_json::{Value, json};

use super::ClientArgs;
use super::client::{Client, EARLIEST, LATEST, str_bytes};
use super::consume::{Start, parse_start};
use super::error::{CliError, Result};
use super::member::{
    Offsets, PROTOCOL_TYPE, commit_offsets, decode_assignment, fetch_committed, group_id,
};
use super::output::{Table, print, print_json};
use super::topic::{error_json, report};

#[derive(Debug, Args)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct GroupArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: GroupAction,
}

#[derive(Debug, Subcommand)]
pub enum GroupAction {
    /// List consumer groups and their states.
    List {
        /// Only groups in this state: Empty, Stable, PreparingRebalance,
        /// CompletingRebalance or Dead (any case).
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
    },
    /// Show a group's state and members (client id, host, assigned
    /// partitions), then per partition its committed offset, log end offset
    /// and lag.
    Describe {
        /// The groups to describe.
        #[arg(required = true, value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Move a group's committed offsets. Prints the plan and changes nothing
    /// unless --execute is given. The group must have no active members.
    #[command(after_help = "TARGET is one of:\n  \
earliest            the log start offset\n  \
latest              the log end offset (skip everything so far)\n  \
OFFSET              this offset (clamped to what the partition holds)\n  \
TIME                the first record at or after TIME: 2026-11-28T10:00:00Z, -10m, @1700000000000\n  \
shift:N             the committed offset plus N (N may be negative; from the log start\n                      \
offset where nothing is committed)\n\n\
Examples:\n  \
ferry group reset-offsets billing --topic orders --to earliest\n  \
ferry group reset-offsets billing --topic orders:0,1 --to shift:-10 --execute\n  \
ferry group reset-offsets billing --topic orders --to 2026-11-28T10:00:00Z --execute")]
    ResetOffsets {
        /// The group whose offsets move.
        #[arg(value_name = "GROUP")]
        group: String,
        /// Topic to reset, all its partitions or only some (orders:0,2); repeatable.
        #[arg(long = "topic", required = true, value_name = "TOPIC[:P,P...]")]
        topics: Vec<String>,
        /// Where to move the offsets (see TARGET below).
        #[arg(long, value_name = "TARGET", allow_hyphen_values = true)]
        to: String,
        /// Commit the new offsets (without it, only the plan is printed).
        #[arg(long)]
        execute: bool,
    },
    /// Delete groups and their committed offsets. Groups with active
    /// members cannot be deleted.
    Delete {
        /// The groups to delete.
        #[arg(required = true, value_name = "GROUP")]
        groups: Vec<String>,
    },
}

/// `--to` of reset-offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    At(Start),
    Shift(i64),
}

impl Target {
    fn reset_target(self) -> ResetTarget {
        match self {
            Target::At(Start::Beginning) => ResetTarget::Earliest,
            Target::At(Start::End) => ResetTarget::Latest,
            Target::At(Start::Offset(n)) => ResetTarget::Offset(n),
            Target::At(Start::Time(t)) => ResetTarget::Timestamp(t),
            Target::Shift(n) => ResetTarget::Shift(n),
        }
    }
}

fn parse_target(s: &str) -> Result<Target> {
    if let Some(n) = s.strip_prefix("shift:") {
        return n.trim().parse::<i64>().map(Target::Shift).map_err(|_| {
            CliError::local(format!(
                "--to {s}: shift:N needs a whole number, e.g. shift:-10"
            ))
        });
    }
    parse_start(s, "--to").map(Target::At).map_err(|_| {
        CliError::local(format!(
            "--to {s:?}: expected earliest, latest, an offset, a time \
             (2026-11-28T10:00:00Z, -10m, @1700000000000) or shift:N"
        ))
    })
}

fn parse_topic_partitions(s: &str) -> Result<(String, Option<Vec<i32>>)> {
    match s.split_once(':') {
        None => Ok((s.to_string(), None)),
        Some((t, ps)) => {
            let parts: std::result::Result<Vec<i32>, _> =
                ps.split(',').map(|p| p.trim().parse::<i32>()).collect();
            match parts {
                Ok(p) if !t.is_empty() && !p.is_empty() => Ok((t.to_string(), Some(p))),
                _ => Err(CliError::local(format!(
                    "--topic {s:?}: expected TOPIC or TOPIC:P,P (e.g. orders:0,2)"
                ))),
            }
        }
    }
}

pub async fn run(args: GroupArgs) -> Result<()> {
    let json = args.client.json;
    let mut reset = None;
    if let GroupAction::ResetOffsets { to, topics, .. } = &args.action {
        let target = parse_target(to)?;
        let mut parsed = Vec::new();
        for t in topics {
            parsed.push(parse_topic_partitions(t)?);
        }
        reset = Some((target, parsed));
    }
    let mut client = Client::connect(&args.client.options()).await?;
    match args.action {
        GroupAction::List { state } => list(&mut client, json, state).await,
        GroupAction::Describe { groups } => {
            let mut out = Vec::new();
            let mut text = Vec::new();
            for g in &groups {
                let (j, t) = describe(&mut client, g).await?;
                out.push(j);
                text.push(t);
            }
            if json {
                print_json(&Value::Array(out));
            } else {
                print(&text.join("\n"));
            }
            Ok(())
        }
        GroupAction::ResetOffsets { group, execute, .. } => {
            let Some((target, topics)) = reset else {
                return Ok(());
            };
            reset_offsets(&mut client, json, &group, topics, target, execute).await
        }
        GroupAction::Delete { groups } => delete(&mut client, json, groups).await,
    }
}

async fn list(client: &mut Client, json: bool, state: Option<String>) -> Result<()> {
    // Each broker lists the groups it coordinates.
    let meta = client.metadata(Some(&[]), false).await?;
    let mut nodes: Vec<i32> = meta.brokers.iter().map(|b| b.node_id.0).collect();
    nodes.sort_unstable();
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    let wanted = state.as_ref().map(|s| s.to_ascii_lowercase());
    for node in nodes {
        let conn = client.node(node).await?;
        let version = conn.version::<ListGroupsRequest>()?;
        let mut req = ListGroupsRequest::default();
        if version >= 4
            && let Some(s) = &state
        {
            req.states_filter = vec![str_bytes(s)];
        }
        let timeout = conn.timeout();
        let resp = conn.call_version(&req, version, timeout).await?;
        if resp.error_code != 0 {
            return Err(CliError::refused("list groups", resp.error_code, None));
        }
        for g in resp.groups {
            let st = g.group_state.to_string();
            if wanted
                .as_ref()
                .is_some_and(|w| !st.is_empty() && st.to_ascii_lowercase() != *w)
            {
                continue;
            }
            groups.insert(g.group_id.0.to_string(), (st, g.protocol_type.to_string()));
        }
    }
    if json {
        print_json(&Value::Array(
            groups
                .iter()
                .map(|(g, (s, p))| json!({"group": g, "state": s, "protocol_type": p}))
                .collect(),
        ));
        return Ok(());
    }
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
    for (g, (s, p)) in groups {
        table.row([g, dash(&s), dash(&p)]);
    }
    print(&table.render());
    Ok(())
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

async fn describe_group(client: &mut Client, group: &str) -> Result<(i32, DescribedGroup)> {
    let coordinator = client.coordinator(group).await?;
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![group_id(group)];
    let resp = client.node(coordinator).await?.call(&req).await?;
    let g =
        resp.groups.into_iter().next().ok_or_else(|| {
            CliError::local(format!("the broker described no group for {group:?}"))
        })?;
    if g.error_code != 0 {
        return Err(CliError::refused(
            format!("describe group {group:?}"),
            g.error_code,
            g.error_message.as_deref(),
        ));
    }
    Ok((coordinator, g))
}

/// Describes one group: (JSON, text).
async fn describe(client: &mut Client, group: &str) -> Result<(Value, String)> {
    let (coordinator, g) = describe_group(client, group).await?;
    let committed = fetch_committed(client.node(coordinator).await?, group, None).await?;
    if g.group_state.as_str() == "Dead" && committed.is_empty() && g.members.is_empty() {
        return Err(CliError::refused(
            format!("describe group {group:?}"),
            69,
            Some("the broker knows no such group"),
        ));
    }
    let consumer = g.protocol_type.as_str() == PROTOCOL_TYPE || g.protocol_type.is_empty();
    // (topic, partition) → member id, from the members' assignments.
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    let mut members_json = Vec::new();
    let mut members = Table::new(&["MEMBER-ID", "CLIENT-ID", "HOST", "PARTITIONS"]);
    for m in &g.members {
        let assignment = if consumer {
            decode_assignment(&m.member_assignment)
        } else {
            BTreeMap::new()
        };
        for (t, ps) in &assignment {
            for p in ps {
                owner.insert((t.clone(), *p), m.member_id.to_string());
            }
        }
        let shown = assignment
            .iter()
            .map(|(t, ps)| {
                let ps: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
                format!("{t}: {}", ps.join(","))
            })
            .collect::<Vec<_>>()
            .join("; ");
        members.row([
            m.member_id.to_string(),
            m.client_id.to_string(),
            m.client_host.to_string(),
            dash(&shown),
        ]);
        members_json.push(json!({
            "member_id": m.member_id.to_string(),
            "instance_id": m.group_instance_id.as_ref().map(|s| s.to_string()),
            "client_id": m.client_id.to_string(),
            "host": m.client_host.to_string(),
            "assignment": assignment,
        }));
    }
    let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (t, p) in committed.keys().chain(owner.keys()) {
        partitions.entry(t.clone()).or_default().insert(*p);
    }
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (t, ps) in &partitions {
        // A topic deleted since the commit has no end offset.
        let Ok(info) = client.topic(t, false).await else {
            continue;
        };
        let ask: Vec<(i32, i64)> = ps
            .iter()
            .filter(|p| info.leader(**p).is_some())
            .map(|&p| (p, LATEST))
            .collect();
        for (p, (o, _)) in client.list_offsets(&info, &ask).await? {
            ends.insert((t.clone(), p), o);
        }
    }
    let mut offsets = Table::new(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "MEMBER-ID",
    ]);
    let mut offsets_json = Vec::new();
    let mut total_lag = 0i64;
    for (t, ps) in &partitions {
        for p in ps {
            let key = (t.clone(), *p);
            let current = committed.get(&key).copied();
            let end = ends.get(&key).copied();
            let lag = match (current, end) {
                (Some(c), Some(e)) => Some((e - c).max(0)),
                _ => None,
            };
            total_lag += lag.unwrap_or(0);
            let member = owner.get(&key).cloned();
            let show = |o: Option<i64>| o.map_or("-".to_string(), |o| o.to_string());
            offsets.row([
                t.clone(),
                p.to_string(),
                show(current),
                show(end),
                show(lag),
                member.clone().unwrap_or_else(|| "-".into()),
            ]);
            offsets_json.push(json!({
                "topic": t,
                "partition": p,
                "committed_offset": current,
                "log_end_offset": end,
                "lag": lag,
                "member_id": member,
            }));
        }
    }
    let mut summary = Table::plain();
    summary.row(["GROUP", group]);
    summary.row(["COORDINATOR", &coordinator.to_string()]);
    summary.row(["STATE", g.group_state.as_str()]);
    summary.row(["PROTOCOL-TYPE", &dash(g.protocol_type.as_str())]);
    summary.row(["PROTOCOL", &dash(g.protocol_data.as_str())]);
    summary.row(["MEMBERS", &g.members.len().to_string()]);
    summary.row(["TOTAL-LAG", &total_lag.to_string()]);
    let mut text = summary.render();
    if !members.is_empty() {
        text.push('\n');
        text.push_str(&members.render());
    }
    if !offsets.is_empty() {
        text.push('\n');
        text.push_str(&offsets.render());
    }
    let value = json!({
        "group": group,
        "coordinator": coordinator,
        "state": g.group_state.to_string(),
        "protocol_type": g.protocol_type.to_string(),
        "protocol": g.protocol_data.to_string(),
        "members": members_json,
        "offsets": offsets_json,
        "total_lag": total_lag,
    });
    Ok((value, text))
}

async fn reset_offsets(
    client: &mut Client,
    json: bool,
    group: &str,
    topics: Vec<(String, Option<Vec<i32>>)>,
    target: Target,
    execute: bool,
) -> Result<()> {
    let (coordinator, g) = describe_group(client, group).await?;
    if !g.members.is_empty() {
        let message = format!(
            "group {group:?} has {} active member(s) (state {}); offsets can only be reset while it has none",
            g.members.len(),
            g.group_state.as_str()
        );
        let hint = format!(
            "stop the group's consumers first (`ferry group describe {group}` lists them), then run this again"
        );
        if execute {
            return Err(CliError::refused_state(message, hint));
        }
        eprintln!("ferry: warning: {message}\nhint: {hint}");
    }
    let mut plan: Vec<(String, i32, Option<i64>, i64)> = Vec::new();
    for (name, only) in topics {
        let info = client.topic(&name, false).await?;
        let parts: Vec<i32> = match only {
            Some(ps) => {
                for p in &ps {
                    if info.leader(*p).is_none() {
                        return Err(CliError::refused(
                            format!("reset the offset of {name}/{p}"),
                            3,
                            Some(&format!(
                                "topic {name:?} has partitions 0-{}",
                                info.partitions.len().saturating_sub(1)
                            )),
                        )
                        .with_hint(format!(
                            "`ferry topic describe {name}` lists its partitions"
                        )));
                    }
                }
                ps
            }
            None => info.partitions.iter().map(|p| p.partition).collect(),
        };
        let committed = fetch_committed(
            client.node(coordinator).await?,
            group,
            Some(&[(name.clone(), parts.clone())]),
        )
        .await?;
        let ask = |ts: i64| parts.iter().map(|&p| (p, ts)).collect::<Vec<_>>();
        let lo = client.list_offsets(&info, &ask(EARLIEST)).await?;
        let hi = client.list_offsets(&info, &ask(LATEST)).await?;
        let by_time = match target {
            Target::At(Start::Time(t)) => client.list_offsets(&info, &ask(t)).await?,
            _ => BTreeMap::new(),
        };
        for &p in &parts {
            let lo = lo.get(&p).map_or(0, |o| o.0);
            let hi = hi.get(&p).map_or(0, |o| o.0).max(lo);
            let current = committed.get(&(name.clone(), p)).copied();
            let at_time = by_time.get(&p).map(|&(o, _)| o);
            let new = reset_offset(target.reset_target(), lo, hi, current, at_time);
            plan.push((name.clone(), p, current, new));
        }
    }
    if execute {
        let offsets: Offsets = plan
            .iter()
            .map(|(t, p, _, new)| ((t.clone(), *p), *new))
            .collect();
        let results =
            commit_offsets(client.node(coordinator).await?, group, -1, "", &offsets).await?;
        for ((t, p), code) in results {
            if code != 0 {
                let mut err = CliError::refused(
                    format!("commit the new offset of {t}/{p} for group {group:?}"),
                    code,
                    None,
                );
                if matches!(code, 22 | 25 | 27) {
                    err = err.with_hint(format!(
                        "the group has active members again; stop them (`ferry group describe {group}`) and retry"
                    ));
                }
                return Err(err);
            }
        }
    }
    if json {
        print_json(&json!({
            "group": group,
            "executed": execute,
            "partitions": plan.iter().map(|(t, p, c, n)| json!({
                "topic": t,
                "partition": p,
                "current_offset": c,
                "new_offset": n,
            })).collect::<Vec<_>>(),
        }));
    } else {
        let mut table = Table::new(&["TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"]);
        for (t, p, c, n) in &plan {
            table.row([
                t.clone(),
                p.to_string(),
                c.map_or("-".into(), |c| c.to_string()),
                n.to_string(),
            ]);
        }
        print(&table.render());
    }
    if execute {
        eprintln!("committed the new offsets of group {group:?}");
    } else {
        eprintln!(
            "dry run: nothing changed; run again with --execute to commit these offsets to group {group:?}"
        );
    }
    Ok(())
}

async fn delete(client: &mut Client, json: bool, groups: Vec<String>) -> Result<()> {
    let mut by_coordinator: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for g in groups {
        let c = client.coordinator(&g).await?;
        by_coordinator.entry(c).or_default().push(g);
    }
    let mut table = Table::new(&["GROUP", "STATUS"]);
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (coordinator, groups) in by_coordinator {
        let mut req = DeleteGroupsRequest::default();
        req.groups_names = groups.iter().map(|g| group_id(g)).collect();
        let resp = client.node(coordinator).await?.call(&req).await?;
        for r in resp.results {
            let g = r.group_id.0.to_string();
            rows.push(json!({
                "group": g,
                "deleted": r.error_code == 0,
                "error": error_json(r.error_code, None),
            }));
            if r.error_code == 0 {
                table.row([g, "deleted".into()]);
            } else {
                let mut err = CliError::refused(format!("delete group {g:?}"), r.error_code, None);
                if r.error_code == 68 {
                    err = err.with_hint(format!(
                        "the group still has members; stop its consumers first (`ferry group describe {g}` lists them)"
                    ));
                }
                errors.push(err);
            }
        }
    }
    if json {
        print_json(&Value::Array(rows));
    } else if !table.is_empty() {
        print(&table.render());
    }
    report(errors)
}
