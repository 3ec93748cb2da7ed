"""PNG plots of a run: training curves, test accuracy and the DATW weight of the ViT teacher."""
from matplotlib.figure import Figure


def plot_history(history, path, title=""):
    """Loss terms per epoch, test top-1, and the mean and last-epoch histogram of w_V (when logged)."""
    epochs = [r["epoch"] for r in history]
    has_w = any("datw/w_vit_mean" in r for r in history)
    fig = Figure(figsize=(5 * (4 if has_w else 2), 4))
    axes = fig.subplots(1, 4 if has_w else 2)
    for key in sorted({k for r in history for k in r if k.startswith("loss/")}):
        axes[0].plot(epochs, [r.get(key) for r in history], label=key[5:])
    axes[0].set(xlabel="epoch", ylabel="loss (epoch mean)", title="training losses")
    axes[0].legend(fontsize=8)
    tested = [r for r in history if "test/top1" in r or "test/verb/top1" in r]
    for key in ("test/top1", "test/verb/top1", "test/noun/top1", "test/action/top1"):
        if tested and key in tested[-1]:
            axes[1].plot([r["epoch"] for r in tested], [r[key] for r in tested], marker="o", label=key[5:])
    axes[1].set(xlabel="epoch", ylabel="top-1 (%)", title="test accuracy")
    axes[1].legend(fontsize=8)
    if has_w:
        logged = [r for r in history if "datw/w_vit_mean" in r]
        axes[2].plot([r["epoch"] for r in logged], [r["datw/w_vit_mean"] for r in logged], marker="o")
        axes[2].set(xlabel="epoch", ylabel="mean w_V", title="DATW weight of the ViT teacher", ylim=(0, 1))
        hist = logged[-1]["datw/w_vit_hist"]
        total = sum(hist) or 1
        axes[3].bar([(i + 0.5) / len(hist) for i in range(len(hist))], [h / total for h in hist],
                    width=0.9 / len(hist))
        axes[3].set(xlabel="w_V", ylabel="fraction of clips", xlim=(0, 1),
                    title=f"w_V histogram, epoch {logged[-1]['epoch']}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
