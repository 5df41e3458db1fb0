// The report's figures, drawn by gnuplot (gnuplot-nox) from data files this module writes: every
// plot has a title, axis labels with units and a legend, so it reads without the code.
#pragma once
#include <string>
#include <vector>

#include "moelab/report/aggregate.h"

namespace moelab {

struct PlotFile {
  std::string file;     // PNG name inside the output directory; "" for a figure not drawn (caption says why)
  std::string title;    // for the report's caption
  std::string caption;  // what the figure shows
};

// Convergence (valid ppl vs tokens and vs wall time, mean line and min-max band over seeds),
// trade-off (valid ppl vs total and active parameters, Pareto front), and per variant with an MoE
// layer: expert-load heatmap over training and the per-expert load bars at the end; where the MoE
// variants span at least three expert counts, quality, tokens/s and memory against experts. Writes
// out_dir/plots/*.png (data and scripts beside them in out_dir/plots/data) and returns what it drew.
// Throws Error when gnuplot is missing or fails, naming the script.
std::vector<PlotFile> write_plots(const std::vector<VariantResult>& variants, const std::string& out_dir);

// True if the file starts with the PNG signature.
bool is_png_file(const std::string& path);

}  // namespace moelab
