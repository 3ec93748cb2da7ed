"""PNG plots of a run: training curves, test accuracy and the per-sample statistics a method logs."""
from matplotlib.figure import Figure


def plot_history(history, path, title=""):
    """Loss terms per epoch, test top-1 (TASK face: verification accuracy), and per logged statistic
    (`stats/<name>/...`, values in [0, 1]) its epoch mean and its last epoch's histogram."""
    epochs = [r["epoch"] for r in history]
    stats = sorted({k.split("/")[1] for r in history for k in r if k.startswith("stats/")})
    fig = Figure(figsize=(5 * (2 + 2 * len(stats)), 4))
    axes = fig.subplots(1, 2 + 2 * len(stats))
    for key in sorted({k for r in history for k in r if k.startswith("loss/")}):
        axes[0].plot(epochs, [r.get(key) for r in history], label=key[5:])
    axes[0].set(xlabel="epoch", ylabel="loss (epoch mean)", title="training losses")
    axes[0].legend(fontsize=8)
    keys = ("test/top1", "test/verb/top1", "test/noun/top1", "test/action/top1", "test/accuracy")
    tested = [r for r in history if any(k in r for k in keys)]
    for key in keys:
        if tested and key in tested[-1]:
            axes[1].plot([r["epoch"] for r in tested], [r[key] for r in tested], marker="o", label=key[5:])
    face = bool(tested) and "test/accuracy" in tested[-1]
    axes[1].set(xlabel="epoch", ylabel="verification accuracy (%)" if face else "top-1 (%)", title="test accuracy")
    axes[1].legend(fontsize=8)
    for i, name in enumerate(stats):
        mean_axis, hist_axis = axes[2 + 2 * i], axes[3 + 2 * i]
        logged = [r for r in history if f"stats/{name}/mean" in r]
        mean_axis.plot([r["epoch"] for r in logged], [r[f"stats/{name}/mean"] for r in logged], marker="o")
        mean_axis.set(xlabel="epoch", ylabel=f"mean {name}", title=f"{name}, epoch mean", ylim=(0, 1))
        hist = logged[-1][f"stats/{name}/hist"]
        total = sum(hist) or 1
        hist_axis.bar([(j + 0.5) / len(hist) for j in range(len(hist))], [h / total for h in hist],
                      width=0.9 / len(hist))
        hist_axis.set(xlabel=name, ylabel="fraction of samples", xlim=(0, 1),
                      title=f"{name} histogram, epoch {logged[-1]['epoch']}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
