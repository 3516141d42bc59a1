"""The benchmark's text table: one formatter per section, joined by `format_report`."""

from __future__ import annotations

from collections.abc import Sequence


def _fmt_ms(s: float | None) -> str:
    if s is None:
        return "-"
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"


def _fmt_x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x" if v < 10 else f"{v:.1f}x"


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    align = align or "l" + "r" * (len(header) - 1)

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _ref_ms(ref: dict) -> str:
    if "skipped" in ref:
        return "skipped"
    return _fmt_ms(ref["step_s"])


def case_cells(case: dict) -> list[str]:
    """The cells that name a benchmark case: task, M, d, rows per partition."""
    return [case["task"], str(case["M"]), f"{case['d']:,}", str(case["n_k"])]


def format_report(result: dict) -> str:
    """The benchmark's text table: the machine header, then one block per section the
    run measured, then the total time."""
    blocks = [format_machine(result)]
    for section in SECTION_FORMATTERS:
        text = section(result)
        if text:
            blocks.append(text)
    blocks.append(f"total {result['total_s']:.0f} s")
    return "\n\n".join(blocks)


def format_machine(result: dict) -> str:
    """The header: machine, versions, NumPy's BLAS and the COCO-EF setting."""
    mc = result["machine"]
    blas = result.get("numpy_blas") or {}
    blas_lib = (blas.get("blas") or [{}])[0] if blas.get("blas") else {}
    blas_text = (
        f" (BLAS {blas_lib.get('internal_api', '?')} {blas_lib.get('architecture', '?')}"
        f", env {blas.get('env_mode', '?')})"
        if blas_lib
        else ""
    )
    st = result["setting"]
    return (
        f"coco-jax bench ({result['mode']}) - {mc['cpu_model']}, {mc['cpu_affinity']} cores, "
        f"{mc['device_count']} x {mc['device_kind']} ({mc['jax_backend']}); "
        f"jax {mc['jax']}, numpy {mc['numpy']}{blas_text}\n"
        f"setting: {st['batch']}; {st['allocation']}; {st['compressor']}; {st['stragglers']}; "
        f"{st['decoder']}; rows per partition n_k = {st['rows_per_partition']}"
    )


THROUGHPUT_HEADER = (
    "task",
    "M",
    "d",
    "n_k",
    "engine",
    "spread",
    "steps/s",
    "dev-steps/s",
    "numpy vec",
    "numpy loop",
    "x vec",
    "x loop",
    "compile s",
)


def _throughput_row(r: dict) -> list[str]:
    e = r["engine"]
    return [
        *case_cells(r),
        _fmt_ms(e["step_s"]),
        f"[{_fmt_ms(e['step_s_min'])}-{_fmt_ms(e['step_s_max'])}]",
        _fmt_rate(e["steps_per_s"]),
        _fmt_rate(e["device_steps_per_s"]),
        _ref_ms(r["numpy_vectorized"]),
        _ref_ms(r["numpy_loop"]),
        _fmt_x(r["x_vectorized"]),
        _fmt_x(r["x_loop"]),
        f"{e['compile_s']:.2f}",
    ]


def format_throughput(result: dict) -> str:
    """[1] step throughput: engine and NumPy step times per case, and what was skipped."""
    if not result.get("throughput"):
        return ""
    rows = [_throughput_row(r) for r in result["throughput"]]
    skipped = [
        f"  skipped {r['id']} {name}: {r[key]['skipped']}"
        for r in result["throughput"]
        for key, name in (("numpy_vectorized", "vec"), ("numpy_loop", "loop"))
        if "skipped" in r[key]
    ]
    title = "[1] step throughput - median step time (ms); x = engine speed / NumPy speed; compile separate"
    return "\n".join([title, _table(THROUGHPUT_HEADER, rows, "llrrrrrrrrrrr"), *skipped])


def format_redundancy(result: dict) -> str:
    """[2] cost of redundancy: step time per s, relative to s = 0."""
    red = result.get("redundancy")
    if not red:
        return ""
    rows = [
        [
            str(r["s"]),
            _fmt_ms(r["engine"]["step_s"]),
            f"{r['engine_rel']:.2f}",
            _ref_ms(r["loop"]),
            "-" if r["loop_rel"] is None else f"{r['loop_rel']:.2f}",
            f"{r['engine']['compile_s']:.2f}",
        ]
        for r in red["levels"]
    ]
    title = (
        f"[2] cost of redundancy - {red['task']} M={red['M']} d={red['d']:,} n_k={red['n_k']}: "
        "step time (ms) and relative to s=0"
    )
    return title + "\n" + _table(["s", "engine", "engine/s0", "numpy loop", "loop/s0", "compile s"], rows)


SWEEP_HEADER = (
    "configs",
    "vmapped cfg-steps/s",
    "one-by-one cfg-steps/s",
    "speedup",
    "vmap compile s",
    "compiles",
    "one-by-one compile s",
    "compiles",
)


def _format_sweep_case(sw: dict) -> str:
    rows = [
        [
            str(r["configs"]),
            _fmt_rate(r["vmapped"]["config_steps_per_s"]),
            _fmt_rate(r["one_by_one"]["config_steps_per_s"]),
            _fmt_x(r["speedup"]),
            f"{r['vmapped']['compile_s']:.2f}",
            str(r["vmapped"]["compilations"]),
            f"{r['one_by_one']['compile_s']:.2f}",
            str(r["one_by_one"]["compilations"]),
        ]
        for r in sw["sizes"]
    ]
    title = (
        f"[3] sweep throughput - {sw['task']} M={sw['M']} d={sw['d']:,} n_k={sw['n_k']}, "
        f"{sw['steps']} steps (eval every {sw['eval_every']}); configurations differ in {sw['varies']}"
    )
    return title + "\n" + _table(SWEEP_HEADER, rows)


def format_sweep(result: dict) -> str:
    """[3] sweep throughput: one table per sweep case."""
    return "\n\n".join(_format_sweep_case(sw) for sw in result.get("sweep", []))


COMPILE_HEADER = (
    "program",
    "HLO lines",
    "cold lower s",
    "compile s",
    "total s",
    "programs",
    "cached lower s",
    "compile s",
    "total s",
    "programs",
    "cold/cached",
)


def _programs(p: dict) -> str:
    """Programs obtained (read back from the cache) per measurement."""
    reps = p.get("reps", 1)
    return f"{p['count'] / reps:g} ({p['loaded'] / reps:g} read)"


def _compile_row(c: dict) -> list[str]:
    cold, cached = c["cold"], c["cached"]
    return [
        c["label"],
        f"{c['hlo_lines']:,}",
        f"{cold['lower_s']:.2f}",
        f"{cold['compile_s']:.2f}",
        f"{cold['total_s']:.2f}",
        _programs(cold["programs"]),
        f"{cached['lower_s']:.2f}",
        f"{cached['compile_s']:.3f}",
        f"{cached['total_s']:.2f}",
        _programs(cached["programs"]),
        _fmt_x(c["cold_over_cached"]),
    ]


def format_compile(result: dict) -> str:
    """[4] compile time: the single run and a sweep group, cold and from the cache."""
    cp = result.get("compile")
    if not cp:
        return ""
    title = (
        f"[4] compile time (s) - {cp['task']} M={cp['M']} d={cp['d']:,} n_k={cp['n_k']}, {cp['steps']} steps "
        f"(sweep chunks of {cp['chunk_steps']}), in a subprocess with a fresh persistent cache "
        f"({cp['process_s']:.0f} s in all)\n"
        f"cold: first compilation, one measurement; cached: after jax.clear_caches(), read back from the "
        f"cache, median of {cp['reps']}; lower = trace + lower; programs: obtained (read from the cache)"
    )
    rows = [_compile_row(cp[name]) for name in ("single", "group")]
    return title + "\n" + _table(COMPILE_HEADER, rows, "lrrrrrrrrrr")


def format_roofline(result: dict) -> str:
    """[5] roofline: the largest-d cases against the measured matmul rate and bandwidth."""
    rf = result.get("roofline")
    if not rf:
        return ""
    rows = [
        [
            *case_cells(c),
            _fmt_rate(c["flops_per_s"]),
            f"{100 * c['flops_fraction']:.1f}%",
            _fmt_rate(c["x_bytes_per_s"]),
            f"{100 * c['read_fraction']:.1f}%",
            f"{100 * c['copy_fraction']:.1f}%",
        ]
        for c in rf["cases"]
    ]
    title = (
        f"[5] roofline - measured here (best of run start/end): float32 matmul {_fmt_rate(rf['matmul_flops_per_s'])}FLOP/s, "
        f"read {_fmt_rate(rf['read_bytes_per_s'])}B/s, copy {_fmt_rate(rf['copy_bytes_per_s'])}B/s (jax)"
    )
    header = ["task", "M", "d", "n_k", "FLOP/s", "of matmul", "X B/s", "of read", "of copy"]
    return title + "\n" + _table(header, rows, "llrrrrrrr")


def format_memory(result: dict) -> str:
    """[6] peak memory of the largest case: device or process peak, XLA's analysis."""
    mem = result.get("memory")
    if not mem:
        return ""
    ma = mem.get("xla_memory_analysis") or {}
    parts = [f"[6] peak memory - largest case {mem['case']} (X {mem['x_bytes'] / 2**20:.0f} MiB):"]
    if mem.get("device_peak_bytes"):
        parts.append(f"device peak {mem['device_peak_bytes'] / 2**20:.0f} MiB;")
    if mem.get("process_peak_rss_bytes"):
        parts.append(f"process peak RSS {mem['process_peak_rss_bytes'] / 2**20:.0f} MiB;")
    if ma:
        parts.append(
            "XLA program: arguments {:.0f} MiB + temporaries {:.0f} MiB + outputs {:.2f} MiB".format(
                ma.get("argument_size_in_bytes", 0) / 2**20,
                ma.get("temp_size_in_bytes", 0) / 2**20,
                ma.get("output_size_in_bytes", 0) / 2**20,
            )
        )
    return " ".join(parts)


def format_targets(result: dict) -> str:
    """[7] the issue's targets: goal, figures of this run, met or missed."""
    if not result.get("targets"):
        return ""
    rows = []
    for t in result["targets"]:
        vals = ", ".join(f"{k} {v:.3g}" for k, v in t["measured"].items()) or "not measured in this mode"
        met = {True: "met", False: "MISSED", None: "-"}[t["met"]]
        rows.append([t["description"], t["target"], vals, met])
    return "[7] targets (issues 6 and 17)\n" + _table(["target", "goal", "measured", ""], rows, "llll")


def format_grid(result: dict) -> str:
    """[8] a large grid: configuration-steps/s by width against the cost model's bound."""
    g = result.get("grid")
    if not g:
        return ""
    rows = []
    for r in g["rows"]:
        m = r["model"]
        rows.append(
            [
                f"{r['width']}",
                f"{r['configs']:,} x {r['steps']}",
                f"{r['compile_s']:.1f}",
                f"{r['run_s']['median']:.2f}",
                _fmt_rate(r["config_steps_per_s"]),
                f"{m['flops'] / 1e6:.2f}M",
                f"{m['bytes'] / 1e6:.2f}M",
                "-" if r["of_bound"] is None else f"{100 * r['of_bound']:.0f}%",
            ]
        )
    title = (
        f"[8] grid - {g['setting']}; default width here {g['default_width']}; bound = max(FLOPs / "
        f"{_fmt_rate(g['matmul_flops_per_s'])}FLOP/s, bytes / {_fmt_rate(g['read_bytes_per_s'])}B/s) per "
        "configuration-step (XLA cost analysis of the compiled step)"
    )
    header = [
        "width",
        "configs x steps",
        "compile s",
        "run s",
        "cfg-steps/s",
        "FLOPs/cfg-step",
        "bytes/cfg-step",
        "of bound",
    ]
    text = title + "\n" + _table(header, rows, "rrrrrrrr")
    h = g.get("h200")
    if h:
        text += (
            f"\nmodel bound on one H200 (not measured): {_fmt_rate(h['bound_config_steps_per_s'])} cfg-steps/s "
            f"({h['assumptions']})"
        )
    return text


def format_scale(result: dict) -> str:
    """[9] the host's share: warm tiny sweep, a tiny grid written to Parquet, a dry run."""
    sc = result.get("scale")
    if not sc:
        return ""
    w, wr, dr = sc["warm"], sc["written"], sc["dry_run"]
    return "\n".join(
        [
            "[9] scale - tiny configurations (linreg M=8, d=10, 20 steps)",
            (
                f"warm sweep of {w['configs']:,}: {w['ms_per_config']:.3f} ms per configuration "
                f"({w['wall_s']['median']:.2f} s wall, run {w['run_s']:.2f} s)"
            ),
            (
                f"{wr['configs']:,} planned, run and written to Parquet: {wr['total_s']:.1f} s (grid {wr['grid_s']:.1f} s, "
                f"compile {wr['compile_s']:.1f} s, run {wr['run_s']:.1f} s, host {wr['host_s']:.1f} s), {wr['rows']:,} rows"
            ),
            (
                f"dry run of {dr['configs']:,}: {dr['total_s']:.1f} s (grid {dr['grid_s']:.1f} s, plan and estimates "
                f"{dr['plan_s']:.1f} s; {dr['us_per_config']:.1f} us per configuration)"
            ),
        ]
    )


SECTION_FORMATTERS = (
    format_throughput,
    format_redundancy,
    format_sweep,
    format_compile,
    format_roofline,
    format_memory,
    format_grid,
    format_scale,
    format_targets,
)
