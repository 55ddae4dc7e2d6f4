"""The training curve as a picture: every step's train loss and each evaluation's held-out reply perplexity
against steps. A short run gets its values written beside its points; a single step says it is no curve."""

from __future__ import annotations

from pathlib import Path

CURVE_FILE = "training_curve.png"
LABELLED = 12  # up to this many points, each is labelled with its value


def plot_curve(log: list[dict], losses: list[list[float]], path: Path, title: str) -> None:
    """log: the evaluations ({step, train_loss, eval_reply_ppl}); losses: [step, train loss] of every step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = losses or [[e["step"], e["train_loss"]] for e in log]  # a run saved before steps were kept
    fig, loss_ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    steps, values = [s for s, _ in losses], [v for _, v in losses]
    loss_ax.plot(steps, values, "-" if len(steps) > LABELLED else "o-", color="tab:blue", lw=1.2,
                 label="train loss (every step)")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("train loss (nats/token)", color="tab:blue")
    ppl_ax = loss_ax.twinx()
    evals = [(e["step"], e["eval_reply_ppl"]) for e in log]
    ppl_ax.plot([s for s, _ in evals], [v for _, v in evals], "s--", color="tab:red", label="held-out reply perplexity")
    ppl_ax.set_ylabel("held-out reply perplexity", color="tab:red")
    if len(steps) <= LABELLED:
        for s, v in losses:
            loss_ax.annotate(f"{v:.2f}", (s, v), textcoords="offset points", xytext=(0, 6), ha="center",
                             fontsize=7, color="tab:blue")
    if len(evals) <= LABELLED:
        for s, v in evals:
            ppl_ax.annotate(f"{v:.1f}", (s, v), textcoords="offset points", xytext=(0, -12), ha="center",
                            fontsize=7, color="tab:red")
    if len(steps) < 2:
        loss_ax.text(0.5, 0.5, f"{len(steps)} step: too few points for a curve", transform=loss_ax.transAxes,
                     ha="center", va="center", fontsize=10, color="0.4")
    if len(steps) <= LABELLED:
        loss_ax.set_xticks(steps)
    loss_ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
