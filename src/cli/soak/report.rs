//! The soak's verdict: the calls, the server's samples and traces summed up
//! into a report, and that report as Markdown.

use super::*;

pub(super) fn summarise(
    a: &SoakArgs,
    calls: Vec<CallOutcome>,
    server: HashMap<String, ServerCall>,
    (mut samples, idle): (Vec<Sample>, Vec<Sample>),
    log: &str,
    exit_status: Option<i32>,
    wall_secs: f64,
) -> Report {
    samples.sort_by(|x, y| x.secs.total_cmp(&y.secs));
    // A call is lost when the server kept no complete record of it, or it
    // ended other than by the caller's hang-up.
    let mut lost = Vec::new();
    let mut incomplete = Vec::new();
    let busy = |c: &CallOutcome| {
        c.error
            .as_deref()
            .is_some_and(|e| e.contains(crate::server::Refusal::Busy.spoken()))
    };
    for c in calls.iter().filter(|c| !busy(c)) {
        match server.get(&c.call_sid) {
            Some(s) if s.ended_by == "stop" => {
                if !s.recording_ok {
                    incomplete.push(c.call_sid.clone());
                }
            }
            Some(s) => lost.push(format!("{} (ended by {})", c.call_sid, s.ended_by)),
            None => lost.push(format!("{} (no trace)", c.call_sid)),
        }
    }
    // Latency over time: each turn in the minute its reply began.
    let minutes = (wall_secs / 60.0).ceil().max(1.0) as usize;
    let mut totals = vec![Vec::new(); minutes];
    let mut callers = vec![Vec::new(); minutes];
    for c in &calls {
        if let Some(s) = server.get(&c.call_sid) {
            for &(at, ms) in &s.totals {
                let m = (((c.started_secs + at) / 60.0) as usize).min(minutes - 1);
                totals[m].push(ms);
            }
        }
        let m = ((c.ended_secs / 60.0) as usize).min(minutes - 1);
        callers[m].extend(&c.latencies_ms);
    }
    let per_minute = (0..minutes)
        .map(|m| {
            (
                m + 1,
                totals[m].len(),
                percentile(&totals[m], 0.5),
                percentile(&totals[m], 0.95),
                percentile(&callers[m], 0.5),
                percentile(&callers[m], 0.95),
            )
        })
        .collect();
    // Memory under the same load at both ends: the median of the minute
    // after warm-up against that of the last minute of calls (single
    // samples swing with whatever the engines hold at that instant).
    let load_end = a.minutes * 60.0;
    let window = |from: f64, to: f64| -> Vec<Sample> {
        samples
            .iter()
            .filter(|s| s.secs >= from && s.secs <= to)
            .copied()
            .collect()
    };
    let median_rss = |w: &[Sample]| -> u64 {
        let v: Vec<f64> = w.iter().map(|s| s.rss_kib as f64).collect();
        percentile(&v, 0.5) as u64
    };
    let max_fds = |w: &[Sample]| w.iter().map(|s| s.fds).max().unwrap_or(0);
    let resumed = idle[0].secs + 10.0;
    let first = window(resumed + 30.0, resumed + 90.0);
    let last = window((load_end - 60.0).max(a.warmup_secs), load_end);
    Report {
        machine: machine(),
        calls_at_once: a.calls,
        minutes: a.minutes,
        wall_secs,
        calls_started: calls.len(),
        calls_turned_away: calls.iter().filter(|c| busy(c)).count(),
        calls_failed_client_side: calls
            .iter()
            .filter(|c| c.error.is_some() && !busy(c))
            .count(),
        calls_lost: lost,
        recordings_incomplete: incomplete,
        turns: calls.iter().map(|c| c.turns).sum(),
        turns_answered: calls.iter().map(|c| c.answered).sum(),
        barge_ins: calls.iter().map(|c| c.barge_ins).sum(),
        dtmf_presses: calls.iter().map(|c| c.dtmf).sum(),
        long_pauses: calls.iter().filter(|c| c.long_pause).count(),
        late_frames: calls.iter().map(|c| c.late_frames).sum(),
        invalid_media: calls.iter().map(|c| c.invalid_media).sum(),
        frames_dropped_server: server.values().map(|s| s.frames_dropped).sum(),
        server_errors: server.values().map(|s| s.errors).sum(),
        panics: log.matches("panicked at").count(),
        exit_status,
        rss_after_warmup_kib: median_rss(&first),
        rss_end_kib: median_rss(&last),
        rss_max_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        idle,
        fds_after_warmup: max_fds(&first),
        fds_end: max_fds(&last),
        per_minute,
        samples,
        calls,
    }
}

pub(super) fn markdown(r: &Report) -> String {
    let change = |from: u64, to: u64| 100.0 * (to as f64 - from as f64) / from.max(1) as f64;
    // `summarise` always has the sample after the warm-up and the last one.
    let (idle_start, idle_end) = (r.idle[0], r.idle[r.idle.len() - 1]);
    let idle_change = change(idle_start.rss_kib, idle_end.rss_kib);
    let mib = |k: u64| k as f64 / 1024.0;
    let ok = |b: bool| if b { "pass" } else { "FAIL" };
    let mut s = format!(
        "# Soak: {} calls at a time for {} min\n\n\
         Machine: {}. Wall time {:.0} s.\n\n\
         | | |\n|---|---|\n\
         | calls started | {} |\n\
         | calls turned away as busy (redialled before the last call's line was free) | {} |\n\
         | calls failed on the caller's side | {} |\n\
         | calls lost (no complete trace, or not ended by the caller) | {} |\n\
         | recordings incomplete | {} |\n\
         | turns answered | {} of {} |\n\
         | barge-ins, DTMF presses, long pauses | {}, {}, {} |\n\
         | late bot frames (phone buffer dry mid-sentence, 20 ms each) | {} |\n\
         | caller frames dropped by the server | {} |\n\
         | malformed media received by the caller | {} |\n\
         | errors in the server's call records | {} |\n\
         | panics in the server's log | {} |\n\
         | exit status after SIGTERM | {} |\n\
         | RSS idle, after warm-up → after the last call | {:.0} → {:.0} MiB ({:+.1} %) |\n\
         | RSS idle at each pause | {} MiB |\n\
         | RSS under load, minute after warm-up → last minute; most | {:.0} → {:.0} MiB ({:+.1} %); {:.0} MiB |\n\
         | open descriptors idle, after warm-up → after the last call | {} → {} |\n\
         | open descriptors under load, most in the minute after warm-up → in the last minute | {} → {} |\n\n",
        r.calls_at_once,
        r.minutes,
        r.machine,
        r.wall_secs,
        r.calls_started,
        r.calls_turned_away,
        r.calls_failed_client_side,
        r.calls_lost.len(),
        r.recordings_incomplete.len(),
        r.turns_answered,
        r.turns,
        r.barge_ins,
        r.dtmf_presses,
        r.long_pauses,
        r.late_frames,
        r.frames_dropped_server,
        r.invalid_media,
        r.server_errors,
        r.panics,
        r.exit_status.map_or("killed".into(), |c| c.to_string()),
        mib(idle_start.rss_kib),
        mib(idle_end.rss_kib),
        idle_change,
        r.idle
            .iter()
            .map(|s| format!("{:.0}", mib(s.rss_kib)))
            .collect::<Vec<_>>()
            .join(" → "),
        mib(r.rss_after_warmup_kib),
        mib(r.rss_end_kib),
        change(r.rss_after_warmup_kib, r.rss_end_kib),
        mib(r.rss_max_kib),
        idle_start.fds,
        idle_end.fds,
        r.fds_after_warmup,
        r.fds_end,
    );
    s.push_str("## Latency over time (ms)\n\n| minute | turns | Total p50 | Total p95 | caller-side p50 | caller-side p95 |\n|---|---|---|---|---|---|\n");
    let ms = |v: f64| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.0}")
        }
    };
    for &(m, n, p50, p95, c50, c95) in &r.per_minute {
        s.push_str(&format!(
            "| {m} | {n} | {} | {} | {} | {} |\n",
            ms(p50),
            ms(p95),
            ms(c50),
            ms(c95)
        ));
    }
    s.push_str(&format!(
        "\n## Checks\n\n\
         - 0 panics: {}\n\
         - 0 calls lost: {}\n\
         - every recording and trace complete: {}\n\
         - RSS idle at the end within 5 % of idle after warm-up: {}\n\
         - no growth in file descriptors (idle against idle): {}\n\
         - clean exit after SIGTERM: {}\n",
        ok(r.panics == 0),
        ok(r.calls_lost.is_empty()),
        ok(r.recordings_incomplete.is_empty()),
        ok(idle_change.abs() <= 5.0),
        ok(idle_end.fds <= idle_start.fds),
        ok(r.exit_status == Some(0)),
    ));
    for c in r.calls.iter().filter(|c| c.error.is_some()) {
        s.push_str(&format!(
            "\n- {} failed: {}",
            c.call_sid,
            c.error.as_deref().unwrap_or("")
        ));
    }
    for l in &r.calls_lost {
        s.push_str(&format!("\n- lost: {l}"));
    }
    s.push('\n');
    s
}
