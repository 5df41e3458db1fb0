set terminal pngcairo size 1100,650 noenhanced font 'sans,10'
set linetype 1 lc rgb '#1f77b4'
set linetype 2 lc rgb '#ff7f0e'
set linetype 3 lc rgb '#2ca02c'
set linetype 4 lc rgb '#d62728'
set linetype 5 lc rgb '#9467bd'
set linetype 6 lc rgb '#8c564b'
set linetype 7 lc rgb '#e377c2'
set linetype 8 lc rgb '#7f7f7f'
set linetype 9 lc rgb '#bcbd22'
set linetype 10 lc rgb '#17becf'
set linetype 11 lc rgb '#000000'
set linetype 12 lc rgb '#aec7e8'
set linetype cycle 12
set output "convergence_tokens.png"
set title "valid BLEU vs tokens trained (line: mean over seeds, band: min to max)"
set xlabel "tokens trained"
set ylabel "valid BLEU"
set autoscale yfix
set offsets 0, 0, graph 0.05, graph 0.05
set grid
set key outside right top
set style fill transparent solid 0.15 noborder
plot "data/convergence_0.dat" using 1:3:4 with filledcurves lc 1 notitle, "data/convergence_0.dat" using 1:2 with linespoints lc 1 pt 7 ps 0.5 lw 1.5 title "transformer", \
  "data/convergence_1.dat" using 1:3:4 with filledcurves lc 2 notitle, "data/convergence_1.dat" using 1:2 with linespoints lc 2 pt 7 ps 0.5 lw 1.5 title "transformer_moe", \
  "data/convergence_2.dat" using 1:3:4 with filledcurves lc 3 notitle, "data/convergence_2.dat" using 1:2 with linespoints lc 3 pt 7 ps 0.5 lw 1.5 title "lstm", \
  "data/convergence_3.dat" using 1:3:4 with filledcurves lc 4 notitle, "data/convergence_3.dat" using 1:2 with linespoints lc 4 pt 7 ps 0.5 lw 1.5 title "lstm_moe", \
  "data/convergence_4.dat" using 1:3:4 with filledcurves lc 5 notitle, "data/convergence_4.dat" using 1:2 with linespoints lc 5 pt 7 ps 0.5 lw 1.5 title "lstm_moe32", \
  "data/convergence_6.dat" using 1:3:4 with filledcurves lc 6 notitle, "data/convergence_6.dat" using 1:2 with linespoints lc 6 pt 7 ps 0.5 lw 1.5 title "lstm_moe_drop", \
  "data/convergence_7.dat" using 1:3:4 with filledcurves lc 7 notitle, "data/convergence_7.dat" using 1:2 with linespoints lc 7 pt 7 ps 0.5 lw 1.5 title "transformer_moe_drop", \
  "data/convergence_8.dat" using 1:3:4 with filledcurves lc 8 notitle, "data/convergence_8.dat" using 1:2 with linespoints lc 8 pt 7 ps 0.5 lw 1.5 title "transformer_moe_d1", \
  "data/convergence_9.dat" using 1:3:4 with filledcurves lc 9 notitle, "data/convergence_9.dat" using 1:2 with linespoints lc 9 pt 7 ps 0.5 lw 1.5 title "transformer_ffn_d1", \
  "data/convergence_10.dat" using 1:3:4 with filledcurves lc 10 notitle, "data/convergence_10.dat" using 1:2 with linespoints lc 10 pt 7 ps 0.5 lw 1.5 title "lstm_moe_rms", \
  "data/convergence_11.dat" using 1:3:4 with filledcurves lc 11 notitle, "data/convergence_11.dat" using 1:2 with linespoints lc 11 pt 7 ps 0.5 lw 1.5 title "lstm_moe_rms_d2", \
  "data/convergence_12.dat" using 1:3:4 with filledcurves lc 12 notitle, "data/convergence_12.dat" using 1:2 with linespoints lc 12 pt 7 ps 0.5 lw 1.5 title "lstm_moe_rms_d1"
