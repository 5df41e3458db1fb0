#include "moelab/report/plots.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include "moelab/report/sweep.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab {

namespace fs = std::filesystem;

namespace {

// Quoted for a gnuplot string: double quotes and backslashes escaped.
std::string gnuplot_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '\n') {  // a raw line break would end the gnuplot command mid-string
      out += "\\n";
      continue;
    }
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

const char* terminal_line() {
  // pngcairo draws antialiased lines and transparent bands; the libgd png terminal is the fallback.
  static const bool cairo = std::system("gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1") == 0;
  // gnuplot's own cycle repeats after 8 colours; studies have up to 9 variants and more.
  static const std::string colours =
      "set linetype 1 lc rgb '#1f77b4'\nset linetype 2 lc rgb '#ff7f0e'\nset linetype 3 lc rgb '#2ca02c'\n"
      "set linetype 4 lc rgb '#d62728'\nset linetype 5 lc rgb '#9467bd'\nset linetype 6 lc rgb '#8c564b'\n"
      "set linetype 7 lc rgb '#e377c2'\nset linetype 8 lc rgb '#7f7f7f'\nset linetype 9 lc rgb '#bcbd22'\n"
      "set linetype 10 lc rgb '#17becf'\nset linetype 11 lc rgb '#000000'\nset linetype 12 lc rgb '#aec7e8'\n"
      "set linetype cycle 12\n";
  static const std::string line =
      (cairo ? "set terminal pngcairo size 1100,650 noenhanced font 'sans,10'\n" : "set terminal png size 1100,650 noenhanced\n") +
      colours;
  return line.c_str();
}

class PlotWriter {
 public:
  explicit PlotWriter(const std::string& out_dir)
      : plots_dir_(fs::absolute(out_dir + "/plots").lexically_normal().string()), data_dir_(plots_dir_ + "/data") {
    fs::create_directories(data_dir_);
  }

  // Writes data/NAME and returns its path relative to the plots directory.
  std::string data(const std::string& name, const std::string& text) {
    write_file_atomically(data_dir_ + "/" + name, text);
    return "data/" + name;
  }

  // Runs a gnuplot script that draws `png` (inside the plots directory).
  void draw(const std::string& png, const std::string& body) {
    const auto script = data_dir_ + "/" + fs::path(png).stem().string() + ".gp";
    write_file_atomically(script, std::string(terminal_line()) + "set output " + gnuplot_string(png) + "\n" + body);
    const auto log = script + ".log";
    const auto command = fmt::format("cd {} && gnuplot {} >{} 2>&1", shell_quote(plots_dir_),
                                     shell_quote("data/" + fs::path(script).filename().string()), shell_quote(log));
    if (std::system(command.c_str()) != 0) {
      if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
        fail("report: gnuplot is not installed (Debian: apt-get install gnuplot-nox)");
      fail("report: gnuplot failed on {} (its messages are in {})", script, log);
    }
    if (!is_png_file(plots_dir_ + "/" + png)) fail("report: gnuplot wrote no PNG for {}", script);
    // A clean run says nothing; only warnings are worth keeping beside the script.
    std::error_code ignored;
    if (fs::file_size(log, ignored) == 0) fs::remove(log, ignored);
  }

 private:
  std::string plots_dir_, data_dir_;
};

struct QualityMetric {
  std::string key, label;
  bool lower_is_better = true;
};

// What the trade-off and convergence plots put on the y axis: the runs' headline validation figure.
QualityMetric quality_metric(const std::vector<VariantResult>& variants) {
  for (const auto& key : headline_validation_keys())
    for (const auto& variant : variants)
      if (variant.metrics.count(key)) {
        const auto* column = report_column(key);
        return {column->key, column->key == "valid_ppl" ? "validation perplexity" : column->label,
                column->lower_is_better};
      }
  return {};
}

// Mean, min and max over seeds of the validation figure at each evaluated step, with the mean
// tokens seen and wall time there.
std::string convergence_data(const VariantResult& variant, const std::string& key) {
  struct At {
    std::vector<double> value, tokens, seconds;
  };
  std::map<int64_t, At> by_step;
  for (const auto* run : variant.finished) {
    const double tokens_per_step = run->summary.value("tokens_per_step", 0.0);
    for (const auto& record : run->metrics) {
      if (!record.contains(key) || !record.contains("step")) continue;
      const int64_t step = record["step"].get<int64_t>();
      auto& at = by_step[step];
      at.value.push_back(record[key].get<double>());
      at.tokens.push_back(run->tokens_before + record.value("tokens_seen", tokens_per_step * static_cast<double>(step)));
      at.seconds.push_back(run->seconds_before + record.value("train_seconds", std::nan("")));
    }
  }
  std::string out = "# tokens mean min max seconds\n";
  auto mean = [](const std::vector<double>& v) { return summarize(v).mean; };
  for (const auto& [step, at] : by_step) {
    const auto [lo, hi] = std::minmax_element(at.value.begin(), at.value.end());
    out += fmt::format("{} {} {} {} {}\n", mean(at.tokens), mean(at.value), *lo, *hi,
                       summarize(at.seconds).n > 0 ? fmt::format("{}", mean(at.seconds)) : std::string("NaN"));
  }
  return out;
}

std::string file_part(const std::string& name) { return readable_name(name); }

std::vector<double> expert_load(const nlohmann::json& summary) {
  if (!summary.contains("moe_layers") || summary["moe_layers"].empty()) return {};
  const auto& layer = summary["moe_layers"][0];
  if (!layer.contains("expert_load")) return {};
  return layer["expert_load"].get<std::vector<double>>();
}

// Labelled ticks for a log axis over [lo, hi]: 1, 1.5, 2, 3, 5, 7 per decade, so a range inside one
// decade still reads (gnuplot's default labels only the powers of ten).
std::string log_axis_ticks(double lo, double hi) {
  if (!(lo > 0) || !(hi >= lo)) return "";
  std::string ticks;
  for (double decade = std::pow(10.0, std::floor(std::log10(lo))); decade <= hi; decade *= 10)
    for (const double step : {1.0, 1.5, 2.0, 3.0, 5.0, 7.0}) {
      const double tick = step * decade;
      if (tick >= lo * 0.95 && tick <= hi * 1.05) ticks += fmt::format("{}{:g}", ticks.empty() ? "" : ", ", tick);
    }
  return ticks.empty() ? "" : "set ytics (" + ticks + ")\n";
}

void convergence_plots(PlotWriter& writer, const std::vector<VariantResult>& variants, const QualityMetric& quality,
                       std::vector<PlotFile>& plots) {
  std::vector<std::pair<std::string, std::string>> series;  // (variant, data file)
  for (size_t i = 0; i < variants.size(); ++i) {
    if (variants[i].finished.empty()) continue;
    series.push_back({variants[i].name, writer.data(fmt::format("convergence_{}.dat", i),
                                                    convergence_data(variants[i], quality.key))});
  }
  if (series.empty()) return;
  // A curve needs two evaluations: with one per run gnuplot draws a lone dot, which reads as a
  // broken figure, so the report says why there is none instead.
  size_t most_points = 0;
  for (const auto& variant : variants) {
    std::set<int64_t> steps;
    for (const auto* run : variant.finished)
      for (const auto& record : run->metrics)
        if (record.contains(quality.key) && record.contains("step")) steps.insert(record["step"].get<int64_t>());
    most_points = std::max(most_points, steps.size());
  }
  if (most_points < 2) {
    plots.push_back({"", "Convergence",
                     fmt::format("Not drawn: no run has more than {} evaluation of {} (a curve needs two; "
                                 "train.eval_every sets how often a run evaluates).",
                                 most_points, quality.label)});
    return;
  }
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (const auto& variant : variants)
    for (const auto* run : variant.finished)
      for (const auto& record : run->metrics)
        if (record.contains(quality.key)) {
          const double v = record[quality.key].get<double>();
          lo = std::min(lo, v), hi = std::max(hi, v);
        }
  const std::string y_scale = quality.key == "valid_ppl" ? "set logscale y\n" + log_axis_ticks(lo, hi) : "";
  for (const auto& [x_column, x_label, png, what] :
       {std::tuple<int, const char*, const char*, const char*>{1, "tokens trained", "convergence_tokens.png", "tokens trained"},
        {5, "training wall time (s, evaluation excluded)", "convergence_time.png", "training wall time"}}) {
    std::string body = fmt::format(
        "set title {}\nset xlabel {}\nset ylabel {}\n{}set autoscale yfix\nset offsets 0, 0, graph 0.05, graph 0.05\n"
        "set grid\nset key outside right top\n"
        "set style fill transparent solid 0.15 noborder\nplot ",
        gnuplot_string(fmt::format("{} vs {} (line: mean over seeds, band: min to max)", quality.label, what)),
        gnuplot_string(x_label), gnuplot_string(quality.label + (quality.key == "valid_ppl" ? " (log scale)" : "")),
        y_scale);
    for (size_t i = 0; i < series.size(); ++i) {
      const auto& [name, file] = series[i];
      body += fmt::format("{}{} using {}:3:4 with filledcurves lc {} notitle, {} using {}:2 with linespoints lc {} pt 7 "
                          "ps 0.5 lw 1.5 title {}",
                          i ? ", \\\n  " : "", gnuplot_string(file), x_column, i + 1, gnuplot_string(file), x_column, i + 1, gnuplot_string(name));
    }
    writer.draw(png, body + "\n");
    plots.push_back({png, fmt::format("Convergence vs {}", what),
                     fmt::format("The {} of each variant against {}; the line is the mean over seeds and the "
                                 "shaded band spans the best and worst seed.",
                                 quality.label, what)});
  }
}

void tradeoff_plot(PlotWriter& writer, const std::vector<VariantResult>& variants, const QualityMetric& quality,
                   std::vector<PlotFile>& plots) {
  struct Point {
    std::string name;
    double total, active, value, std;
  };
  std::vector<Point> points;
  for (const auto& v : variants) {
    const auto value = v.metrics.find(quality.key);
    const auto total = v.metrics.find("params_total");
    const auto active = v.metrics.find("params_active_per_token");
    if (value == v.metrics.end() || total == v.metrics.end() || active == v.metrics.end()) continue;
    points.push_back({v.name, total->second.mean, active->second.mean, value->second.mean, value->second.std});
  }
  if (points.empty()) return;
  std::string table = "# name params_total params_active value std\n";
  for (const auto& p : points) table += fmt::format("{} {} {} {} {}\n", gnuplot_string(p.name), p.total, p.active, p.value, p.std);
  const auto data = writer.data("tradeoff.dat", table);
  // Pareto front: fewest parameters for a given quality; walking up the parameter axis, a point
  // is on the front if it beats every cheaper one.
  auto front = [&](bool use_total) {
    auto sorted = points;
    std::sort(sorted.begin(), sorted.end(), [&](const Point& a, const Point& b) {
      const double xa = use_total ? a.total : a.active, xb = use_total ? b.total : b.active;
      return xa != xb ? xa < xb : (quality.lower_is_better ? a.value < b.value : a.value > b.value);
    });
    std::string out = "# x value\n";
    bool first = true;
    double best = 0;
    for (const auto& p : sorted) {
      const bool better = first || (quality.lower_is_better ? p.value < best : p.value > best);
      if (!better) continue;
      best = p.value, first = false;
      out += fmt::format("{} {}\n", use_total ? p.total : p.active, p.value);
    }
    return out;
  };
  const auto front_total = writer.data("pareto_total.dat", front(true));
  const auto front_active = writer.data("pareto_active.dat", front(false));
  std::string body = fmt::format("set multiplot layout 1,2 title {}\nset grid\nset key below horizontal maxrows 3\n"
                                 "set ylabel {}\n",
                                 gnuplot_string(fmt::format("Trade-off: {} vs parameters (mean ± std over seeds; "
                                                    "dashed: Pareto front)",
                                                    quality.label)),
                                 gnuplot_string(quality.label));
  // One series per variant (its colour in the legend) rather than text labels, which overlap when
  // variants share a parameter count.
  for (const auto& [column, label, front_file] :
       {std::tuple<int, const char*, std::string>{2, "parameters, total", front_total},
        {3, "parameters active per token", front_active}}) {
    body += fmt::format("set xlabel {}\nset format x '%.2s%c'\nplot ", gnuplot_string(label));
    for (size_t i = 0; i < points.size(); ++i)
      body += fmt::format("{} every ::{}::{} using {}:4:5 with yerrorbars pt 7 ps 1.2 lc {} title {}, ", gnuplot_string(data), i,
                          i, column, i + 1, gnuplot_string(points[i].name));
    body += fmt::format("{} using 1:2 with linespoints dt 2 lw 2 pt 6 ps 2.2 lc rgb '#444444' title 'Pareto front'\n",
                        gnuplot_string(front_file));
  }
  writer.draw("tradeoff.png", body + "unset multiplot\n");
  plots.push_back({"tradeoff.png", "Trade-off: quality vs parameters",
                   fmt::format("The {} against total parameters (left) and parameters active per token "
                               "(right); the dashed line joins the variants no cheaper variant beats.",
                               quality.label)});
}

// The number of experts of a variant's (first) MoE layer; 0 for a model without one.
int64_t variant_experts(const VariantResult& variant) {
  if (variant.finished.empty()) return 0;
  const auto& summary = variant.finished.front()->summary;
  if (!summary.contains("moe_layers") || summary["moe_layers"].empty()) return 0;
  return summary["moe_layers"][0].value("experts", int64_t{0});
}

// Shazeer et al. 2017's Table 7 as a figure: quality, throughput and memory against the number of
// experts, for studies whose MoE variants differ in it (at least three expert counts). Models
// without an MoE layer (the baselines) are drawn as horizontal lines across the panel.
void scaling_plot(PlotWriter& writer, const std::vector<VariantResult>& variants, const QualityMetric& quality,
                  std::vector<PlotFile>& plots) {
  struct Panel {
    std::string key, label;
  };
  const std::vector<Panel> panels = {{quality.key, quality.label},
                                     {"tokens_per_s", "training tokens/s"},
                                     {"peak_rss_mb", "peak resident memory (MiB)"}};
  std::vector<std::pair<int64_t, const VariantResult*>> moe;  // (experts, variant)
  std::vector<const VariantResult*> baselines;
  std::set<int64_t> counts;
  for (const auto& v : variants) {
    if (v.finished.empty() || !v.metrics.count(quality.key)) continue;
    const auto experts = variant_experts(v);
    if (experts == 0) {
      baselines.push_back(&v);
      continue;
    }
    moe.push_back({experts, &v});
    counts.insert(experts);
  }
  if (counts.size() < 3) return;
  std::stable_sort(moe.begin(), moe.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  auto stats = [](const VariantResult& v, const std::string& key) {
    std::vector<double> values;
    for (const auto* run : v.finished) values.push_back(run_metric(*run, key));
    const auto s = summarize(values);
    double lo = s.mean, hi = s.mean;
    for (const double x : values)
      if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
    return std::array<double, 4>{s.mean, s.std, lo, hi};
  };
  // One row per MoE variant: experts, then mean std min max for each panel's figure.
  std::string table = "# name experts";
  for (const auto& panel : panels) table += " " + panel.key + "_mean _std _min _max";
  table += "\n";
  for (const auto& [experts, v] : moe) {
    table += fmt::format("{} {}", gnuplot_string(v->name), experts);
    for (const auto& panel : panels) {
      const auto st = stats(*v, panel.key);
      table += fmt::format(" {} {} {} {}", st[0], st[1], st[2], st[3]);
    }
    table += "\n";
  }
  const auto data = writer.data("scaling.dat", table);
  const double lo = static_cast<double>(*counts.begin()) / 1.5, hi = static_cast<double>(*counts.rbegin()) * 1.5;
  std::string body = fmt::format(
      "set multiplot layout 1,3 title {}\nset grid\nset key below vertical maxrows 4\nset logscale x 2\n"
      "set xrange [{}:{}]\nset xlabel 'experts (log scale)'\n",
      gnuplot_string("Experts at equal active FLOPs per token (MoE: mean line, seed min-max band; "
                     "dashed: models without an MoE layer, mean over seeds)"),
      lo, hi);
  for (size_t p = 0; p < panels.size(); ++p) {
    const int mean = 3 + 4 * static_cast<int>(p);
    body += fmt::format("set ylabel {}\nplot {} using 2:{}:{} with filledcurves fs transparent solid 0.2 "
                        "lc rgb '#1f77b4' notitle, {} using 2:{} with linespoints pt 7 lw 2 lc rgb '#1f77b4' "
                        "title 'MoE'",
                        gnuplot_string(panels[p].label), gnuplot_string(data), mean + 2, mean + 3,
                        gnuplot_string(data), mean);
    for (size_t b = 0; b < baselines.size(); ++b) {
      const auto it = baselines[b]->metrics.find(panels[p].key);
      if (it == baselines[b]->metrics.end()) continue;
      body += fmt::format(", {} with lines dt 2 lw 2 lc {} title {}", it->second.mean, b + 2,
                          gnuplot_string(baselines[b]->name));
    }
    body += "\n";
  }
  writer.draw("scaling.png", body + "unset multiplot\n");
  plots.push_back({"scaling.png", "Scaling: quality, speed and memory vs experts",
                   fmt::format("The {} (left), training tokens/s (middle) and peak memory (right) of the MoE "
                               "variants against their number of experts, with the models without an MoE layer "
                               "as dashed lines.",
                               quality.label)});
}

void utilisation_plots(PlotWriter& writer, const std::vector<VariantResult>& variants, std::vector<PlotFile>& plots) {
  for (size_t i = 0; i < variants.size(); ++i) {
    const auto& variant = variants[i];
    if (variant.finished.empty() || expert_load(variant.finished.front()->summary).empty()) continue;
    const auto* run = variant.finished.front();
    const auto name = file_part(variant.name);

    // Heatmaps: one column per logging window of the first seed, for the first and the last MoE
    // layer (a Transformer has one per MoE block).
    const size_t num_layers = run->summary["moe_layers"].size();
    std::vector<size_t> layers = {0};
    if (num_layers > 1) layers.push_back(num_layers - 1);
    for (const size_t layer : layers) {
      const std::string layer_name = run->summary["moe_layers"][layer].value("name", std::to_string(layer));
      const std::string suffix = num_layers > 1 ? "_layer" + std::to_string(layer) : "";
      const std::string which = num_layers > 1 ? ", " + layer_name : "";
      std::string grid;
      int64_t windows = 0, experts = 0;
      for (const auto& record : run->metrics) {
        if (!record.contains("moe_layers") || record["moe_layers"].size() <= layer || !record.contains("loss")) continue;
        const auto load = record["moe_layers"][layer].value("expert_load", std::vector<double>{});
        if (load.empty()) continue;
        experts = static_cast<int64_t>(load.size());
        for (size_t e = 0; e < load.size(); ++e)
          grid += fmt::format("{} {} {}\n", record["step"].get<int64_t>(), e, 100.0 * load[e]);
        grid += "\n";
        ++windows;
      }
      if (windows == 0) continue;
      if (windows == 1) {  // one column: an image of a single window reads as an empty heatmap
        plots.push_back({"", "Expert load over training: " + variant.name + which,
                         "Not drawn: the run logged routing over a single window (train.log_every >= "
                         "train.steps); the heatmap needs two windows or more."});
        continue;
      }
      const auto data = writer.data("heatmap_" + name + suffix + ".dat", grid);
      const auto png = "load_heatmap_" + name + suffix + ".png";
      writer.draw(png, fmt::format(
                           "set title {}\nset xlabel 'training step'\nset ylabel 'expert'\nset cblabel '% of "
                           "token-slots in the logging window'\nset palette defined (0 '#ffffff', 0.2 '#c6dbef', 0.45 "
                           "'#6baed6', 0.7 '#2171b5', 1 '#08306b')\nset cbrange [0:*]\nset autoscale xfix\nset yrange [-0.5:{}]\nset key off\n"
                           "plot {} using 1:2:3 with image\n",
                           gnuplot_string(fmt::format("Expert load over training: {}{} (seed {}; uniform = {:.2f}%)",
                                                      variant.name, which, run->seed, 100.0 / static_cast<double>(experts))),
                           static_cast<double>(experts) - 0.5, gnuplot_string(data)));
      plots.push_back({png, "Expert load over training: " + variant.name + which,
                       "Share of token-slots each expert received in each logging window of training (first seed). "
                       "A balanced router gives an even colour; a collapsed one, a few dark rows."});
    }

    // Bars: final validation load per expert, mean and std over seeds.
    std::vector<std::vector<double>> loads;
    for (const auto* r : variant.finished) loads.push_back(expert_load(r->summary));
    std::string bars = "# expert mean_percent std_percent\n";
    const size_t experts_now = loads.front().size();
    for (size_t e = 0; e < experts_now; ++e) {
      std::vector<double> values;
      for (const auto& load : loads)
        if (e < load.size()) values.push_back(100.0 * load[e]);
      const auto s = summarize(values);
      bars += fmt::format("{} {} {}\n", e, s.mean, s.std);
    }
    const auto data = writer.data("load_" + name + ".dat", bars);
    const auto png = "load_bars_" + name + ".png";
    const double uniform = 100.0 / static_cast<double>(experts_now);
    writer.draw(png, fmt::format("set title {}\nset xlabel 'expert'\nset ylabel '% of token-slots (validation)'\n"
                                 "set style fill solid 0.6 border -1\nset boxwidth 0.8\nset grid ytics\n"
                                 "set xrange [-0.6:{}]\nset yrange [0:*]\nset key top right\n"
                                 "plot {} using 1:2:3 with boxerrorbars lc 3 title 'mean ± std over {} seed(s)', {} with "
                                 "lines dt 2 lw 2 lc 7 title 'uniform ({:.2f}%)'\n",
                                 gnuplot_string("Per-expert load at the end of training: " + variant.name),
                                 static_cast<double>(experts_now) - 0.4, gnuplot_string(data), loads.size(), uniform, uniform));
    plots.push_back({png, "Per-expert load at the end: " + variant.name,
                     "Share of the validation token-slots each expert received after training, averaged over "
                     "seeds; the dashed line is a perfectly even split."});
  }
}

}  // namespace

bool is_png_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char header[8] = {};
  in.read(header, 8);
  return in.gcount() == 8 && std::string(header, 8) == std::string("\x89PNG\r\n\x1a\n", 8);
}

std::vector<PlotFile> write_plots(const std::vector<VariantResult>& variants, const std::string& out_dir) {
  PlotWriter writer(out_dir);
  std::vector<PlotFile> plots;
  const auto quality = quality_metric(variants);
  if (!quality.key.empty()) {
    convergence_plots(writer, variants, quality, plots);
    tradeoff_plot(writer, variants, quality, plots);
    scaling_plot(writer, variants, quality, plots);
  }
  utilisation_plots(writer, variants, plots);
  for (auto& plot : plots)
    if (!plot.file.empty()) plot.file = "plots/" + plot.file;
  return plots;
}

}  // namespace moelab
