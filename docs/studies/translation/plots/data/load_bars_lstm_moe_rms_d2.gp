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
set output "load_bars_lstm_moe_rms_d2.png"
set title "Per-expert load at the end of training: lstm_moe_rms_d2"
set xlabel 'expert'
set ylabel '% of token-slots (validation)'
set style fill solid 0.6 border -1
set boxwidth 0.8
set grid ytics
set xrange [-0.6:7.6]
set yrange [0:*]
set key top right
plot "data/load_lstm_moe_rms_d2.dat" using 1:2:3 with boxerrorbars lc 3 title 'mean ± std over 1 seed(s)', 12.5 with lines dt 2 lw 2 lc 7 title 'uniform (12.50%)'
