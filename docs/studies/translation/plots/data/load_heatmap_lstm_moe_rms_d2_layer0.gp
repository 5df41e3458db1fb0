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
set output "load_heatmap_lstm_moe_rms_d2_layer0.png"
set title "Expert load over training: lstm_moe_rms_d2, encoder_moe_2 (seed 1; uniform = 12.50%)"
set xlabel 'training step'
set ylabel 'expert'
set cblabel '% of token-slots in the logging window'
set palette defined (0 '#ffffff', 0.2 '#c6dbef', 0.45 '#6baed6', 0.7 '#2171b5', 1 '#08306b')
set cbrange [0:*]
set autoscale xfix
set yrange [-0.5:7.5]
set key off
plot "data/heatmap_lstm_moe_rms_d2_layer0.dat" using 1:2:3 with image
