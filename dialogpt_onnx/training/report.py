"""The training curve as a picture: train loss and held-out reply perplexity against steps."""

from __future__ import annotations

from pathlib import Path

CURVE_FILE = "training_curve.png"


def plot_curve(log: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in log]
    fig, loss_ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    loss_ax.plot(steps, [e["train_loss"] for e in log], "o-", color="tab:blue", label="train loss")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("train loss (nats/token)", color="tab:blue")
    ppl_ax = loss_ax.twinx()
    ppl_ax.plot(steps, [e["eval_reply_ppl"] for e in log], "s-", color="tab:red", label="held-out reply perplexity")
    ppl_ax.set_ylabel("held-out reply perplexity", color="tab:red")
    ppl_ax.set_yscale("log")
    loss_ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
