(function () {
  "use strict";
  var SVG_NS = "http://www.w3.org/2000/svg";
  var DASH = "\u2014";
  var MINUS = "\u2212";
  var ARMS = ["champion", "challenger"];
  var ARM_LABEL = { champion: "Champion", challenger: "Challenger" };
  var VERDICTS = {
    promote: { label: "Promote the challenger", tone: "good" },
    rollback: { label: "Roll back to the champion", tone: "bad" },
    continue: { label: "Keep the test running", tone: "info" },
    insufficient: { label: "Not enough data yet", tone: "muted" },
    blocked: { label: "Decision blocked", tone: "warn" },
    none: { label: "No A/B test running", tone: "muted" }
  };
  var RULE_LABELS = {
    alpha: "Significance level (alpha)",
    min_users_per_arm: "Minimum users per arm",
    min_lift: "Minimum relative lift to promote",
    srm_alpha: "Traffic split check threshold (SRM alpha)",
    max_latency_increase: "Largest p95 latency increase allowed (relative)",
    max_report_rate_increase: "Largest report-rate increase allowed (per exposure)"
  };

  // ---- reading values that may be null, missing or of the wrong type -------------------------
  function isObj(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }
  function obj(v) { return isObj(v) ? v : {}; }
  function list(v) { return Array.isArray(v) ? v : []; }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function text(v) { return v === null || v === undefined || v === "" ? null : String(v); }
  function readJson(id) {
    var el = document.getElementById(id);
    var raw = el ? el.textContent.trim() : "";
    if (!raw) return null;
    try { return JSON.parse(raw); } catch (e) { console.error("dashboard: #" + id + " is not JSON", e); return null; }
  }

  // ---- formatting ------------------------------------------------------------------------------
  var fixedCache = {};
  function fixed(v, digits) {
    var f = fixedCache[digits] || (fixedCache[digits] = new Intl.NumberFormat("en-US",
      { minimumFractionDigits: digits, maximumFractionDigits: digits }));
    return f.format(v);
  }
  var sigFormat = new Intl.NumberFormat("en-US", { maximumSignificantDigits: 4 });
  var compactFormat = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  function withSign(v, body, digits) {
    // no sign on what rounds to zero: "+0.0%" reads as a real gain
    if (Number(Math.abs(v).toFixed(digits)) === 0) return body;
    return (v > 0 ? "+" : MINUS) + body;
  }
  function fmtInt(v) { v = num(v); return v === null ? DASH : (v < 0 ? MINUS : "") + fixed(Math.abs(v), 0); }
  function fmtPct(v, digits) {
    v = num(v); if (v === null) return DASH;
    return (v < 0 ? MINUS : "") + fixed(Math.abs(v) * 100, digits) + "%";
  }
  function fmtSignedPct(v, digits) {
    v = num(v); if (v === null) return DASH;
    return withSign(v * 100, fixed(Math.abs(v) * 100, digits) + "%", digits);
  }
  function fmtShare(v) {  // 0.5 -> "50%", 0.333 -> "33.3%"
    v = num(v); if (v === null) return DASH;
    var p = v * 100;
    return fixed(p, Math.abs(p - Math.round(p)) < 1e-9 ? 0 : 1) + "%";
  }
  function fmtPp(v) {
    v = num(v);
    return v === null ? DASH : withSign(v * 100, fixed(Math.abs(v) * 100, 2) + " pp", 2);
  }
  function fmtMs(v) { v = num(v); return v === null ? DASH : fixed(v, Math.abs(v) < 10 ? 1 : 0) + " ms"; }
  function fmtP(v) { v = num(v); return v === null ? DASH : v < 0.001 ? "< 0.001" : fixed(v, 3); }
  function pIs(v) { var p = fmtP(v); return p.charAt(0) === "<" ? "p " + p : "p = " + p; }
  function fmtNum(v) {
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (isObj(v) || Array.isArray(v)) return JSON.stringify(v);
    var n = num(v);
    if (n === null) return text(v) === null ? DASH : String(v);
    if (Number.isInteger(n) || Math.abs(n) >= 1000) return fmtInt(n);
    return (n < 0 ? MINUS : "") + sigFormat.format(Math.abs(n));
  }
  // Names of fractions (a rate, a share, a lift, a relative latency increase) read better as
  // percentages; names of counts and milliseconds do not. signed: a change, "+10.8%".
  function fmtByName(name, v, signed) {
    var n = num(v);
    var fraction = /rate|share|lift|increase|split|reduction|latency/i.test(name) &&
      !/(^|_)ms($|_)|users|count|exposures/i.test(name);
    if (fraction && n !== null) {
      var digits = Math.abs(n) < 0.01 ? 2 : 1;
      return signed ? fmtSignedPct(n, digits) : fmtPct(n, digits);
    }
    return fmtNum(v);
  }
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  function pad2(n) { return n < 10 ? "0" + n : String(n); }
  function parseTime(v) {
    if (typeof v === "string" && /^\d{4}-\d\d-\d\dT[\d:.]+$/.test(v)) v += "Z";  // naive ISO: UTC, not local
    var t = typeof v === "string" ? Date.parse(v) : NaN;
    return isFinite(t) ? new Date(t) : null;
  }
  function fmtDay(d) { return d.getUTCDate() + " " + MONTHS[d.getUTCMonth()]; }
  function fmtClock(d) { return pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes()); }
  function fmtTime(v) {  // "12 Mar 2025, 14:05 UTC"; an unparseable value is shown as given
    var d = parseTime(v);
    if (d === null) return text(v) === null ? DASH : String(v);
    return fmtDay(d) + " " + d.getUTCFullYear() + ", " + fmtClock(d) + " UTC";
  }
  function fmtDuration(ms) {
    var units = [[86400000, "day"], [3600000, "hour"], [60000, "minute"], [1000, "second"]];
    for (var i = 0; i < units.length; i++) {
      if (ms >= units[i][0] && ms % units[i][0] === 0) {
        var k = ms / units[i][0];
        return k + "-" + units[i][1];
      }
    }
    return fixed(ms / 1000, 0) + "-second";
  }

  // ---- DOM: text only, never HTML --------------------------------------------------------------
  function build(el, attrs, children) {
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") el.textContent = v;
      else el.setAttribute(k, String(v));
    });
    (children || []).forEach(function (c) { if (c !== null && c !== undefined) el.append(c); });
    return el;
  }
  function h(tag, attrs, children) { return build(document.createElement(tag), attrs, children); }
  function s(tag, attrs, children) { return build(document.createElementNS(SVG_NS, tag), attrs, children); }
  function byId(id) { return document.getElementById(id); }
  function emptyNote(W, H, note) {
    return s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "class": "empty", text: note });
  }
  function setText(id, value) { byId(id).textContent = value; }
  function version(v) { return v === null || v === undefined || v === "" ? DASH : "v" + v; }

  // ---- sections ----------------------------------------------------------------------------------
  function renderHeader(r) {
    var exp = obj(r.experiment);
    setText("champion-version", version(exp.champion_version));
    setText("challenger-version", version(exp.challenger_version));
    setText("experiment-id", text(exp.id) || DASH);
    setText("started-at", fmtTime(exp.started_at));
    var split = num(exp.split);
    setText("split", split === null ? DASH : fmtShare(1 - split) + " champion / " + fmtShare(split) + " challenger");
    setText("generated-at", fmtTime(r.generated_at));
    var ended = text(exp.ended_at);
    byId("ended").hidden = ended === null;
    setText("ended-at", ended === null ? "" : fmtTime(ended));
    setText("outcome", text(exp.outcome) ? " (" + exp.outcome + ")" : "");
  }

  function renderVerdict(r) {
    var decision = obj(r.decision);
    var srm = obj(r.srm);
    var verdict = text(decision.verdict);
    var known = verdict !== null && Object.prototype.hasOwnProperty.call(VERDICTS, verdict) ? VERDICTS[verdict] : null;
    var card = byId("verdict");
    var srmFailed = srm.ok === false;
    card.className = "card verdict tone-" + (known ? known.tone : "muted") + (srmFailed ? " untrusted" : "");
    card.setAttribute("data-verdict", verdict || "");
    setText("verdict-label", known ? known.label : verdict ? "Verdict: " + verdict : "No verdict yet");
    setText("headline", text(decision.headline) || (known ? known.label + "." : "The report has no verdict yet."));
    var reasons = byId("reasons");
    reasons.replaceChildren.apply(reasons, list(decision.reasons).map(function (reason) {
      return h("li", { text: fmtNum(reason) });
    }));
    document.title = "A/B " + (text(obj(r.experiment).id) || "test") + ": " + (known ? known.label : "no verdict");

    var warning = byId("srm-warning");
    warning.hidden = !srmFailed;
    if (srmFailed) {
      warning.replaceChildren(
        h("strong", { text: "Sample ratio mismatch: do not trust any verdict from this test." }),
        "Users are not split between the arms as configured (expected " + fmtShare(srm.expected_share) +
          " on the challenger, observed " + fmtPct(srm.observed_share, 1) + ", " + pIs(srm.p_value) +
          "). Assignment or logging is broken; fix it and restart the test.");
    }
  }

  var ARM_ROWS = [
    ["users", "Users", fmtInt, null],
    ["exposures", "Exposures", fmtInt, null],
    ["engagements", "Engagements", fmtInt, null],
    ["engagement_rate", "Engagement rate", function (v) { return fmtPct(v, 2); }, "pp"],
    ["report_rate", "Report rate", function (v) { return fmtPct(v, 2); }, "pp"],
    ["latency_p50_ms", "Latency p50", fmtMs, "ms"],
    ["latency_p95_ms", "Latency p95", fmtMs, "ms"],
    ["latency_p99_ms", "Latency p99", fmtMs, "ms"]
  ];
  function renderArms(r) {
    var arms = obj(r.arms);
    var exp = obj(r.experiment);
    var head = h("tr", {}, [h("th", { scope: "col", text: "Metric" })].concat(ARMS.map(function (arm) {
      return h("th", { scope: "col", "class": "arm-" + arm, "data-arm": arm,
        text: ARM_LABEL[arm] + " " + version(exp[arm + "_version"]) });
    }), [h("th", { scope: "col", "class": "diff", text: "Difference" })]));
    var rows = ARM_ROWS.map(function (row) {
      var key = row[0];
      var a = num(obj(arms.champion)[key]);
      var b = num(obj(arms.challenger)[key]);
      var diff = "";
      if (row[3] && a !== null && b !== null) {
        diff = row[3] === "pp" ? fmtPp(b - a)
          : withSign(b - a, fmtMs(Math.abs(b - a)), Math.abs(b - a) < 10 ? 1 : 0) +
            (a > 0 ? " (" + fmtSignedPct((b - a) / a, 1) + ")" : "");
      }
      return h("tr", { "data-metric": key }, [h("th", { scope: "row", text: row[1] })].concat(ARMS.map(function (arm) {
        return h("td", { "data-arm": arm, "data-metric": key, text: row[2](obj(arms[arm])[key]) });
      }), [h("td", { "class": "diff", "data-arm": "difference", "data-metric": key, text: diff })]));
    });
    byId("arms").replaceChildren(h("thead", {}, [head]), h("tbody", {}, rows));
  }

  function renderLift(r) {
    var lift = obj(r.lift);
    var rel = num(lift.relative);
    var csLow = num(lift.cs_low), csHigh = num(lift.cs_high);
    var big = byId("lift-relative");
    big.textContent = fmtSignedPct(rel, 1);
    big.className = "big" + (csLow !== null && csLow > 0 ? " up" : csHigh !== null && csHigh < 0 ? " down" : "");
    setText("lift-absolute", num(lift.absolute) === null ? "" : fmtPp(lift.absolute) + " in engagement rate");
    var conf = num(lift.confidence);
    var level = conf === null ? "" : " " + fmtShare(conf);
    setText("lift-cs-label", "Always-valid" + level + " interval (used for the verdict)");
    var method = text(lift.ci_method) && lift.ci_method !== "fixed" ? " (" + lift.ci_method + ")" : "";  // the label says fixed-horizon already
    setText("lift-ci-label", "Fixed-horizon" + level + " interval" + method);
    setText("lift-cs", fmtRange(csLow, csHigh));
    setText("lift-ci", fmtRange(lift.ci_low, lift.ci_high));
    setText("lift-avp", fmtP(lift.always_valid_p));
    setText("lift-p", fmtP(lift.p_value));
    var cuped = lift.cuped === true ? "yes" : lift.cuped === false ? "no" : DASH;
    if (lift.cuped === true && num(lift.variance_reduction) !== null) {
      cuped += ", " + fmtPct(lift.variance_reduction, 1) + " less variance";
    }
    setText("lift-cuped", cuped);
    drawLiftPlot(byId("lift-plot"), lift, num(obj(r.rule).min_lift));
  }
  function fmtRange(lo, hi) {
    lo = num(lo); hi = num(hi);
    return lo === null || hi === null ? DASH : fmtSignedPct(lo, 1) + " to " + fmtSignedPct(hi, 1);
  }

  function renderSrm(r) {
    var srm = obj(r.srm);
    var card = byId("srm");
    var ok = srm.ok === true ? "true" : srm.ok === false ? "false" : "";
    card.setAttribute("data-ok", ok);
    var pill = byId("srm-status");
    pill.textContent = ok === "true" ? "OK" : ok === "false" ? "Failed" : "Not checked";
    pill.className = "pill" + (ok === "true" ? " ok" : ok === "false" ? " bad" : "");
    setText("srm-text", ok === "true" ? "Users are split between the arms as planned."
      : ok === "false" ? "The split is off: results are not trustworthy." : "No split check in this report yet.");
    setText("srm-expected", fmtPct(srm.expected_share, 1));
    setText("srm-observed", fmtPct(srm.observed_share, 1));
    setText("srm-p", fmtP(srm.p_value));
  }

  function renderGuardrails(r) {
    var rails = list(r.guardrails).map(obj);
    var breached = rails.filter(function (g) { return g.ok === false; }).length;
    setText("guardrails-summary", rails.length === 0 ? "No guardrails in this report."
      : breached === 0 ? "All " + rails.length + " guardrails hold."
      : breached + " of " + rails.length + " guardrails breached.");
    var head = h("tr", {}, ["Guardrail", "Status", "Value", "Limit"].map(function (t) {
      return h("th", { scope: "col", text: t });
    }));
    var rows = rails.map(function (g) {
      var name = text(g.name) || DASH;
      var state = g.ok === true ? "ok" : g.ok === false ? "breached" : "unknown";
      return h("tr", { "class": state, "data-name": name, "data-ok": state === "unknown" ? "" : String(g.ok) }, [
        h("td", {}, [name, text(g.detail) ? h("span", { "class": "detail", text: String(g.detail) }) : null]),
        h("td", { "class": "status" }, [h("span", {
          "class": "pill" + (state === "ok" ? " ok" : state === "breached" ? " bad" : ""),
          text: state === "ok" ? "OK" : state === "breached" ? "Breached" : "Unknown"
        })]),
        h("td", { "class": "value", text: fmtByName(name, g.value, true) }),
        h("td", { "class": "limit", text: fmtByName(name, g.limit) })
      ]);
    });
    var table = byId("guardrails");
    if (rows.length === 0) table.replaceChildren();
    else table.replaceChildren(h("thead", {}, [head]), h("tbody", {}, rows));
  }

  function renderRule(r) {
    var rule = obj(r.rule);
    var keys = Object.keys(rule);
    var dl = byId("rule");
    if (keys.length === 0) {
      dl.replaceChildren(h("div", {}, [h("dt", { text: "No rule in this report." })]));
      return;
    }
    dl.replaceChildren.apply(dl, keys.map(function (key) {
      var label = RULE_LABELS[key] || key.replace(/_/g, " ").replace(/^./, function (c) { return c.toUpperCase(); });
      var value = key === "min_users_per_arm" ? fmtInt(rule[key]) : key === "min_lift" ? fmtSignedPct(rule[key], 1)
        : fmtByName(key, rule[key]);
      return h("div", { "data-key": key }, [h("dt", { text: label }), h("dd", { "data-key": key, text: value })]);
    }));
  }

  // ---- charts ---------------------------------------------------------------------------------
  function niceStep(range, count) {
    var raw = range / Math.max(count, 1);
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var norm = raw / mag;
    return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
  }
  function ticksBetween(lo, hi, step) {
    var out = [];
    for (var v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Number(v.toPrecision(12)));  // 0.1 + 0.2 -> 0.3
    }
    return out;
  }

  // Drawn at the SVG's real width, so text is 1:1 on any screen; redrawn when the window resizes.
  function widthOf(svg, fallback) {
    var w = Math.round(svg.getBoundingClientRect().width);
    return w >= 200 ? w : fallback;
  }

  function drawLiftPlot(svg, lift, minLift) {
    var W = widthOf(svg, 380), H = 104, L = 96, R = 16;
    var rows = [["Always-valid", "cs", 30], ["Fixed-horizon", "ci", 58]];  // label, key prefix, y
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var est = num(lift.relative);
    var values = [0, est, num(lift.cs_low), num(lift.cs_high), num(lift.ci_low), num(lift.ci_high), minLift]
      .filter(function (v) { return v !== null; });
    var children = [];
    if (values.length === 1) {
      svg.replaceChildren(emptyNote(W, H, "No lift estimate yet"));
      return;
    }
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    var span = hi - lo || 0.02;
    var step = niceStep(span * 1.2, W < 320 ? 3 : 4);
    lo = Math.floor((lo - span * 0.08) / step) * step;
    hi = Math.ceil((hi + span * 0.08) / step) * step;
    function x(v) { return L + (W - L - R) * (v - lo) / (hi - lo); }
    var axisY = 80;
    var digits = step * 100 >= 1 ? 0 : 1;
    ticksBetween(lo, hi, step).forEach(function (t) {
      children.push(s("line", { x1: x(t), x2: x(t), y1: 14, y2: axisY, "class": "grid-line" }));
      children.push(s("text", { x: x(t), y: axisY + 14, "text-anchor": "middle", text: fmtSignedPct(t, digits) }));
    });
    children.push(s("line", { x1: L, x2: W - R, y1: axisY, y2: axisY, "class": "axis-line" }));
    children.push(s("line", { x1: x(0), x2: x(0), y1: 10, y2: axisY, "class": "zero-line" }));
    if (minLift !== null && minLift !== 0) {
      children.push(s("line", { x1: x(minLift), x2: x(minLift), y1: 10, y2: axisY, "class": "min-lift-line" }));
      children.push(s("text", { x: x(minLift) + 3, y: 10, "class": "axis-title", text: "min lift" }));
    }
    rows.forEach(function (row) {
      var a = num(lift[row[1] + "_low"]), b = num(lift[row[1] + "_high"]);
      children.push(s("text", { x: 0, y: row[2] + 4, text: row[0] }));
      if (a !== null && b !== null) {
        var tone = a > 0 ? "tone-up" : b < 0 ? "tone-down" : "tone-flat";
        children.push(s("line", {
          x1: x(a), x2: x(b), y1: row[2], y2: row[2], "class": "interval " + row[1] + " " + tone,
          "data-low": a, "data-high": b
        }, [s("title", { text: row[0] + ": " + fmtRange(a, b) })]));
      } else {
        children.push(s("text", { x: L, y: row[2] + 4, "class": "axis-title", text: "not available" }));
      }
      if (est !== null) children.push(s("circle", { cx: x(est), cy: row[2], r: 4.5, "class": "estimate" }));
    });
    svg.replaceChildren.apply(svg, children);
  }

  // One row per (bucket, arm) -> per arm, one value per bucket (null where the arm has no row).
  function bucketSeries(timeline) {
    var rows = timeline.map(obj);
    var starts = [];
    var seen = {};
    rows.forEach(function (row) {
      var key = String(row.start);
      if (!Object.prototype.hasOwnProperty.call(seen, key)) { seen[key] = true; starts.push(key); }
    });
    starts.sort(function (a, b) {
      var ta = Date.parse(a), tb = Date.parse(b);
      if (isFinite(ta) && isFinite(tb)) return ta - tb;
      return isFinite(ta) ? -1 : isFinite(tb) ? 1 : a < b ? -1 : a > b ? 1 : 0;
    });
    var index = {};
    starts.forEach(function (key, i) { index[key] = i; });
    var byArm = {};
    rows.forEach(function (row) {
      var arm = text(row.arm);
      if (arm === null) return;
      if (!byArm[arm]) byArm[arm] = starts.map(function () { return null; });
      byArm[arm][index[String(row.start)]] = row;
    });
    return { starts: starts, byArm: byArm };
  }

  function lineChart(svg, buckets, series, opts) {
    var W = widthOf(svg, 560), H = 280, m = { l: 52, r: 16, t: 52, b: 44 };
    var pw = W - m.l - m.r, ph = H - m.t - m.b;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var n = buckets.starts.length;
    if (n === 0 || series.length === 0) {
      svg.replaceChildren(emptyNote(W, H, "No data over time yet"));
      return;
    }
    var all = [];
    series.forEach(function (sr) { sr.values.forEach(function (v) { if (v !== null) all.push(v); }); });
    var max = all.length ? Math.max.apply(null, all) : 0;
    var step = niceStep(max > 0 ? max : opts.emptyMax, 4);
    var top = Math.max(Math.ceil(max / step - 1e-9) * step, step);
    function x(i) { return n === 1 ? m.l + pw / 2 : m.l + pw * i / (n - 1); }
    function y(v) { return m.t + ph - ph * v / top; }
    var children = [];
    ticksBetween(0, top, step).forEach(function (t) {
      children.push(s("line", { x1: m.l, x2: W - m.r, y1: y(t), y2: y(t), "class": "grid-line" }));
      children.push(s("text", { x: m.l - 8, y: y(t) + 4, "text-anchor": "end", text: opts.tick(t, step, top) }));
    });
    children.push(s("line", { x1: m.l, x2: W - m.r, y1: m.t + ph, y2: m.t + ph, "class": "axis-line" }));
    children.push(s("line", { x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph, "class": "axis-line" }));

    // x labels: as many as fit, in UTC, with the date when the test spans more than a day
    var times = buckets.starts.map(parseTime);
    var first = times[0], last = times[n - 1];
    var bucketMs = n > 1 && times[1] && first ? times[1] - first : null;
    var spanMs = first && last ? last - first : 0;
    var every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(pw / (spanMs >= 86400000 ? 95 : 60)))));
    for (var i = 0; i < n; i += every) {
      var d = times[i];
      var label = d === null ? buckets.starts[i] : spanMs > 7 * 86400000 ? fmtDay(d)
        : spanMs >= 86400000 ? fmtDay(d) + " " + fmtClock(d) : fmtClock(d);
      children.push(s("line", { x1: x(i), x2: x(i), y1: m.t + ph, y2: m.t + ph + 4, "class": "axis-line" }));
      var anchor = n > 1 && i === 0 ? "start" : "middle";
      children.push(s("text", { x: x(i), y: m.t + ph + 17, "text-anchor": anchor, text: label }));
    }
    children.push(s("text", { x: m.l + pw / 2, y: H - 6, "text-anchor": "middle", "class": "axis-title",
      text: "Time (UTC) \u00b7 not cumulative" }));
    var per = bucketMs && bucketMs > 0 ? " per " + fmtDuration(bucketMs) + " bucket" : " per bucket";
    children.push(s("text", { x: 0, y: 13, "class": "axis-title chart-title", text: opts.yTitle + per }));

    series.forEach(function (sr) {
      var d = "";
      var pen = "M";
      var points = 0;
      var marks = [];
      sr.values.forEach(function (v, i) {
        if (v === null) { pen = "M"; return; }
        d += pen + x(i).toFixed(1) + "," + y(v).toFixed(1) + " ";
        pen = "L";
        points += 1;
        if (n <= 60) {
          var when = times[i] ? fmtTime(buckets.starts[i]) : buckets.starts[i];
          marks.push(s("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.6, "class": "arm-" + sr.arm },
            [s("title", { text: sr.label + ", " + when + ": " + opts.value(v) })]));
        }
      });
      children.push(s("path", {
        d: d.trim(), "class": "series arm-" + sr.arm, "data-arm": sr.arm, "data-points": points
      }));
      children = children.concat(marks);
    });

    // legend, under the title
    var lx = 0;
    series.forEach(function (sr) {
      children.push(s("line", { x1: lx, x2: lx + 18, y1: 29, y2: 29, "class": "series arm-" + sr.arm }));
      var label = s("text", { x: lx + 24, y: 33, "class": "legend", text: sr.label });
      children.push(label);
      lx += 24 + sr.label.length * 7 + 22;
    });
    svg.replaceChildren.apply(svg, children);
  }

  function renderCharts(r) {
    var buckets = bucketSeries(list(r.timeline));
    var exp = obj(r.experiment);
    var arms = ARMS.filter(function (arm) { return buckets.byArm[arm]; });
    function series(value) {
      return arms.map(function (arm) {
        return { arm: arm, label: ARM_LABEL[arm] + " " + version(exp[arm + "_version"]),
          values: buckets.byArm[arm].map(function (row) { return row === null ? null : value(row); }) };
      });
    }
    lineChart(byId("chart-exposures"), buckets, series(function (row) { return num(row.exposures); }), {
      yTitle: "Exposures", emptyMax: 10, value: function (v) { return fmtInt(v) + " exposures"; },
      tick: function (t, step, top) { return top >= 10000 ? compactFormat.format(t) : fmtInt(t); }
    });
    lineChart(byId("chart-engagement"), buckets, series(function (row) {
      var e = num(row.engagements), x = num(row.exposures);
      return e === null || x === null || x <= 0 ? null : e / x;
    }), {
      yTitle: "Engagement rate", emptyMax: 0.01, value: function (v) { return fmtPct(v, 2) + " engagement"; },
      tick: function (t, step) { return fmtPct(t, step * 100 >= 1 ? 0 : step * 100 >= 0.1 ? 1 : 2); }
    });
  }

  // ---- load, refresh, errors --------------------------------------------------------------------
  var config = obj(readJson("config"));
  var refreshS = num(config.refresh_s) || 0;
  var lastGood = null;  // Date of the last report shown
  var renders = 0;
  function clock(d) { return fmtClock(d) + ":" + pad2(d.getUTCSeconds()) + " UTC"; }

  var shown = null;  // the report on screen, redrawn on resize
  function show(report) {
    try {
      var r = obj(report);
      shown = r;
      renderHeader(r);
      renderVerdict(r);
      renderArms(r);
      renderLift(r);
      renderSrm(r);
      renderGuardrails(r);
      renderCharts(r);
      renderRule(r);
    } catch (e) {
      console.error("dashboard: could not render the report", e);
      showError("the report could not be displayed (" + e.message + ")");
      return false;
    }
    lastGood = new Date();
    renders += 1;
    document.body.setAttribute("data-renders", String(renders));
    setText("checked-at", "Updated " + clock(lastGood));
    return true;
  }

  function showError(why) {
    var banner = byId("error");
    var keep = lastGood ? " Showing the last good data, from " + clock(lastGood) + "." : " No data to show yet.";
    var retry = config.report_url && refreshS > 0 ? " Retrying every " + refreshS + " s." : "";
    var title = lastGood ? "Could not update the report" : "Could not load the report";
    banner.replaceChildren(h("strong", { text: title }), "Reason: " + why + "." + keep + retry);
    banner.hidden = false;
  }
  function clearError() { var banner = byId("error"); banner.hidden = true; banner.replaceChildren(); }

  var inFlight = false;
  function refresh() {
    if (inFlight) return;
    inFlight = true;
    fetch(config.report_url, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (resp) {
        if (!resp.ok) {
          throw new Error("the server answered HTTP " + resp.status + (resp.statusText ? " " + resp.statusText : ""));
        }
        return resp.json().catch(function () { throw new Error("the report is not valid JSON"); });
      }, function (e) { throw new Error("the report could not be reached (" + e.message + ")"); })
      .then(function (data) {
        if (!isObj(data)) throw new Error("the report is not a JSON object");
        if (show(data)) clearError();
      })
      .catch(function (e) { showError(e.message); })
      .then(function () { inFlight = false; });
  }

  var footer = "Champion vs challenger, served by Ray Serve. " +
    "Rates are per exposure; lifts are relative to the champion.";
  if (config.report_url && refreshS > 0) footer += " Refreshes every " + refreshS + " s.";
  setText("footer", footer);

  // A page rewritten in place (document.open) keeps this window's listeners and timers: they stop
  // once the elements they drew into are not the ones this script started with.
  var root = byId("verdict");
  function mine() { return byId("verdict") === root; }
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      if (shown === null || !mine()) return;
      try { renderLift(shown); renderCharts(shown); } catch (e) { console.error("dashboard: could not redraw", e); }
    }, 120);
  });

  var embedded = readJson("report");
  if (embedded !== null) show(embedded);
  else if (!config.report_url) setText("headline", "No report to show.");
  if (config.report_url) {
    if (embedded === null) refresh();
    if (refreshS > 0) {
      var timer = setInterval(function () { if (mine()) refresh(); else clearInterval(timer); }, refreshS * 1000);
    }
  }
})();
