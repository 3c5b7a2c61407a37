/* fastws dashboard: a small canvas line chart, no dependencies.
 *
 *   const chart = new FastwsChart(canvas, {
 *     series: [{label: "in", color: "#2563eb"}, {label: "out", color: "#d97706"}],
 *     format: FastwsChart.format.rate,   // value -> label: "1.2k/s"
 *     integer: false,                    // y gridlines on whole numbers only
 *     window: 600,                       // seconds of x axis, and points kept
 *   });
 *   chart.push(time, [valueIn, valueOut]);   // time in seconds; null is a gap
 *
 * The x axis ends at the newest point's time (the server's clock, so a
 * skewed client clock does not matter). Text takes the canvas's CSS color.
 */
"use strict";

class FastwsChart {
  constructor(canvas, options) {
    this.canvas = canvas;
    this.series = options.series;
    this.format = options.format || FastwsChart.format.count;
    this.integer = !!options.integer;
    this.window = options.window || 600;
    this.times = [];
    this.values = this.series.map(() => []);
    FastwsChart.all.push(this);
    this.draw();
  }

  push(time, values) {
    this.times.push(time);
    this.series.forEach((_, i) => this.values[i].push(values[i] ?? null));
    while (this.times.length > this.window) {
      this.times.shift();
      this.values.forEach(v => v.shift());
    }
    this.draw();
  }

  /* 0 and 2-3 more gridlines at a 1/2/2.5/5 x 10^n step above the data. */
  scale(max) {
    if (!(max > 0)) max = 1;
    const raw = max / 3;
    const exp = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / exp;
    let step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * exp;
    if (this.integer) step = Math.max(1, Math.ceil(step));
    const steps = Math.max(2, Math.ceil(max / step - 1e-9));
    return {step, top: step * steps, steps};
  }

  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const ink = getComputedStyle(c).color;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";

    const n = this.times.length;
    const end = n ? this.times[n - 1] : Date.now() / 1000;
    const start = end - this.window;
    let max = 0;
    this.values.forEach(vs => vs.forEach((v, i) => {
      if (v !== null && isFinite(v) && this.times[i] >= start) max = Math.max(max, v);
    }));
    const {step, top, steps} = this.scale(max);

    // Legend, with each series' newest value.
    ctx.textAlign = "left";
    let x = 4;
    this.series.forEach((s, i) => {
      const last = n ? this.values[i][n - 1] : null;
      const text = s.label + " " + (last === null ? "–" : this.format(last));
      ctx.fillStyle = s.color;
      ctx.fillRect(x, 4, 10, 10);
      ctx.fillStyle = ink;
      ctx.fillText(text, x + 14, 9);
      x += 14 + ctx.measureText(text).width + 14;
    });

    // Plot area: y labels on the left, x labels below.
    const labels = [];
    for (let i = 0; i <= steps; i++) labels.push(this.format(i * step));
    const left = 8 + Math.max(...labels.map(t => ctx.measureText(t).width));
    const right = w - 8, top0 = 26, bottom = h - 18;
    const px = t => left + (t - start) / this.window * (right - left);
    const py = v => bottom - v / top * (bottom - top0);

    ctx.strokeStyle = ink;
    ctx.lineWidth = 1;
    ctx.globalAlpha = 0.15;
    ctx.beginPath();
    for (let i = 0; i <= steps; i++) {
      const y = Math.round(py(i * step)) + 0.5;
      ctx.moveTo(left, y);
      ctx.lineTo(right, y);
    }
    ctx.stroke();
    ctx.globalAlpha = 0.7;
    ctx.fillStyle = ink;
    ctx.textAlign = "right";
    labels.forEach((t, i) => ctx.fillText(t, left - 4, py(i * step)));
    // A label every two minutes of a 10-minute window: "-10m" ... "now".
    const every = this.window / 5;
    for (let i = 0; i <= 5; i++) {
      ctx.textAlign = i === 0 ? "left" : i === 5 ? "right" : "center";
      const ago = Math.round((5 - i) * every / 60);
      ctx.fillText(i === 5 ? "now" : "-" + ago + "m", left + i / 5 * (right - left), h - 8);
    }
    ctx.globalAlpha = 1;
    if (!n) {
      ctx.textAlign = "center";
      ctx.fillText("waiting for data", (left + right) / 2, (top0 + bottom) / 2);
      return;
    }

    // The lines: a null value, or more than 5 s without a point, is a gap.
    ctx.lineWidth = 1.5;
    ctx.lineJoin = ctx.lineCap = "round";
    this.series.forEach((s, k) => {
      const vs = this.values[k];
      ctx.strokeStyle = s.color;
      ctx.beginPath();
      let pen = false;
      for (let i = 0; i < n; i++) {
        const v = vs[i];
        if (v === null || !isFinite(v) || (i && this.times[i] - this.times[i - 1] > 5)) pen = false;
        if (v === null || !isFinite(v)) continue;
        if (pen) ctx.lineTo(px(this.times[i]), py(v));
        else ctx.moveTo(px(this.times[i]), py(v)), ctx.lineTo(px(this.times[i]) + 0.5, py(v));  // a lone point shows
        pen = true;
      }
      ctx.stroke();
    });
  }
}

FastwsChart.all = [];
addEventListener("resize", () => FastwsChart.all.forEach(chart => chart.draw()));

/* Number to text: "950", "1.2k", "34k", "5.6M"; a decimal only below 100. */
FastwsChart.scaled = (v, base, units, sep) => {
  let i = 0;
  while (Math.abs(v) >= 999.5 && i < units.length - 1) {
    v /= base;
    i++;
  }
  const digits = Math.abs(v) < 100 && v % 1 ? 1 : 0;
  return String(Number(v.toFixed(digits))) + sep + units[i];
};

FastwsChart.format = {
  count: v => FastwsChart.scaled(v, 1000, ["", "k", "M", "G"], ""),
  rate: v => FastwsChart.scaled(v, 1000, ["/s", "k/s", "M/s", "G/s"], ""),
  bytes: v => FastwsChart.scaled(v, 1000, ["B/s", "kB/s", "MB/s", "GB/s"], " "),
  // Milliseconds in, "0.25 ms", "12 ms", "1.5 s" out.
  ms: v => v >= 1000 ? FastwsChart.scaled(v / 1000, 1000, ["s"], " ")
    : String(Number(v.toFixed(v < 1 ? 2 : v < 10 ? 1 : 0))) + " ms",
};
