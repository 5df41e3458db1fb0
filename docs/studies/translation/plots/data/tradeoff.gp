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
set output "tradeoff.png"
set multiplot layout 1,2 title "Trade-off: valid BLEU vs parameters (mean ± std over seeds; dashed: Pareto front)"
set grid
set key below horizontal maxrows 3
set ylabel "valid BLEU"
set xlabel "parameters, total"
set format x '%.2s%c'
plot "data/tradeoff.dat" every ::0::0 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 1 title "transformer", "data/tradeoff.dat" every ::1::1 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 2 title "transformer_moe", "data/tradeoff.dat" every ::2::2 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 3 title "lstm", "data/tradeoff.dat" every ::3::3 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 4 title "lstm_moe", "data/tradeoff.dat" every ::4::4 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 5 title "lstm_moe32", "data/tradeoff.dat" every ::5::5 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 6 title "lstm_moe_drop", "data/tradeoff.dat" every ::6::6 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 7 title "transformer_moe_drop", "data/tradeoff.dat" every ::7::7 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 8 title "transformer_moe_d1", "data/tradeoff.dat" every ::8::8 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 9 title "transformer_ffn_d1", "data/tradeoff.dat" every ::9::9 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 10 title "lstm_moe_rms", "data/tradeoff.dat" every ::10::10 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 11 title "lstm_moe_rms_d2", "data/tradeoff.dat" every ::11::11 using 2:4:5 with yerrorbars pt 7 ps 1.2 lc 12 title "lstm_moe_rms_d1", "data/pareto_total.dat" using 1:2 with linespoints dt 2 lw 2 pt 6 ps 2.2 lc rgb '#444444' title 'Pareto front'
set xlabel "parameters active per token"
set format x '%.2s%c'
plot "data/tradeoff.dat" every ::0::0 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 1 title "transformer", "data/tradeoff.dat" every ::1::1 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 2 title "transformer_moe", "data/tradeoff.dat" every ::2::2 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 3 title "lstm", "data/tradeoff.dat" every ::3::3 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 4 title "lstm_moe", "data/tradeoff.dat" every ::4::4 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 5 title "lstm_moe32", "data/tradeoff.dat" every ::5::5 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 6 title "lstm_moe_drop", "data/tradeoff.dat" every ::6::6 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 7 title "transformer_moe_drop", "data/tradeoff.dat" every ::7::7 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 8 title "transformer_moe_d1", "data/tradeoff.dat" every ::8::8 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 9 title "transformer_ffn_d1", "data/tradeoff.dat" every ::9::9 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 10 title "lstm_moe_rms", "data/tradeoff.dat" every ::10::10 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 11 title "lstm_moe_rms_d2", "data/tradeoff.dat" every ::11::11 using 3:4:5 with yerrorbars pt 7 ps 1.2 lc 12 title "lstm_moe_rms_d1", "data/pareto_active.dat" using 1:2 with linespoints dt 2 lw 2 pt 6 ps 2.2 lc rgb '#444444' title 'Pareto front'
unset multiplot
