"""Table, one-line summary and learning-curve plot of ``bench_quality_compare`` results."""

from __future__ import annotations

from pathlib import Path

NAMES = {"bit": "BitTransformerLM flat (bits)", "framed": "BitTransformerLM framed (bits)"}
COLORS = {"bit": "tab:blue", "framed": "tab:green"}


def _model_text(run: dict) -> str:
    m = run["model"]
    return f"{m['layers']}x{m['d_model']}, {m['max_seq_len']}-bit window"


def summary(r: dict) -> str:
    budgets = list(r["runs"])
    kinds = [k for k in NAMES if any(k in r["runs"][b] for b in budgets)]
    per = {k: " / ".join(f"{r['runs'][b][k]['val_bits_per_byte']:.2f}" if k in r["runs"][b] else "not run"
                         for b in budgets) for k in kinds}
    diff = max((abs(r["runs"][b][k].get("params_vs_bit", 0.0)) for b in budgets for k in kinds if k in r["runs"][b]),
               default=0.0)
    comp = ", ".join(f"{k} {v:.2f}" for k, v in r["compressors"].items())
    label = {"bit": "flat bit model", "framed": "framed bit model"}
    models = ", ".join(f"{label[k]} {per[k]}" for k in kinds)
    return (f"Tiny Shakespeare val bits/byte after {' / '.join(budgets)} CPU-min of training: {models} "
            f"(same Trainer and budget, params within {diff:.1%}); {comp}")


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Quality per compute on Tiny Shakespeare ({r['val_bytes']:,} validation bytes scored), the models "
             f"trained {'concurrently' if r['concurrent'] else 'one after the other'}, one torch thread each, budgets "
             f"in {r.get('budget_clock', 'wall clock')}, "
             f"{m['cpu']}, torch {m['torch']}, load average at the end {m['load_avg']}.", "",
             "| model | params | budget | updates | epochs | val bits/byte |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for budget, pair in r["runs"].items():
        for kind, run in pair.items():
            lines.append(f"| {NAMES[kind]} {_model_text(run)} | {run['params']:,} | {budget} min | "
                         f"{run['updates']:,} | {run['epochs']:.2f} | {run['val_bits_per_byte']:.3f} |")
    for name, v in r["compressors"].items():
        lines.append(f"| {name} (same bytes, given the training split) | - | - | - | - | {v:.3f} |")
    return "\n".join(lines) + "\n\n" + r["summary"] + "\n"


def plot(r: dict, path: Path) -> Path:
    """Validation bits/byte vs training seconds, both models, every budget; compressors as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.6), dpi=110)
    styles = ["-", "--", ":", "-."]
    budgets = sorted(r["runs"], key=float, reverse=True)
    worst = []
    for i, budget in enumerate(budgets):
        for kind, run in r["runs"][budget].items():
            xs = [p["train_s"] for p in run["curve"]]
            ys = [p["val_bpb"] for p in run["curve"]]
            worst += ys[1:] or ys
            ax.plot(xs, ys, styles[i % len(styles)], color=COLORS[kind], marker="o", markersize=3,
                    label=f"{NAMES[kind]}, {budget}-min budget")
            ax.plot([run["train_seconds"]], [run["val_bits_per_byte"]], marker="*", markersize=11,
                    color=COLORS[kind], linestyle="none")
    for (name, v), ls in zip(r["compressors"].items(), [(0, (2, 2)), (0, (6, 2)), (0, (1, 1))], strict=False):
        ax.axhline(v, color="gray", linestyle=ls, linewidth=1, label=f"{name} (given the training text): {v:.2f}")
    top = max([*worst, *r["compressors"].values()]) if worst else None
    if top:
        ax.set_ylim(top=min(top * 1.08, 9.5))
    ax.set_xlim(left=0)
    ax.set_xlabel(f"training seconds ({r.get('budget_clock', 'wall clock')}, evaluations excluded)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("Tiny Shakespeare: flat and framed bit models, same parameters and budget", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.text(0.01, 0.01, "lines: the Trainer's validation windows during training; "
             f"stars: all {r['val_bytes']:,} scored validation bytes at the end of the budget",
             fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
