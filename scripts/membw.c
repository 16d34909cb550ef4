// Memory bandwidth and compute scaling on 1 and 2 threads: why f32 list scans cannot reach
// 2x on two cores (docs/BENCHMARKS.md, TT index second pass). Not part of the build:
//   gcc -O3 -march=native -fopenmp scripts/membw.c -o /tmp/membw && /tmp/membw
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
static double compute(long n) { double a = 1.0, b = 1.0000001, c[8] = {0}; for (long i = 0; i < n; i++) for (int k = 0; k < 8; k++) c[k] = c[k] * b + a; double s = 0; for (int k = 0; k < 8; k++) s += c[k]; return s; }
static float stream(const float *x, long n) { float s[16] = {0}; for (long i = 0; i < n; i += 16) for (int k = 0; k < 16; k++) s[k] += x[i + k]; float t = 0; for (int k = 0; k < 16; k++) t += s[k]; return t; }
int main() {
  long n = 64L << 20; float *buf[2]; for (int t = 0; t < 2; t++) { buf[t] = aligned_alloc(64, n * 4); for (long i = 0; i < n; i++) buf[t][i] = 1.0f; }
  for (int threads = 1; threads <= 2; threads++) {
    double t0 = omp_get_wtime(); double s = 0;
    #pragma omp parallel num_threads(threads) reduction(+:s)
    s += compute(200000000L);
    double tc = omp_get_wtime() - t0;
    t0 = omp_get_wtime(); float f = 0;
    #pragma omp parallel num_threads(threads) reduction(+:f)
    for (int r = 0; r < 5; r++) f += stream(buf[omp_get_thread_num()], n);
    double ts = omp_get_wtime() - t0;
    printf("%d thread(s): compute %.3f s (work per thread fixed), stream %.1f GB/s total [%g %g]\n", threads, tc, threads * 5.0 * n * 4 / ts / 1e9, s, f);
  }
}
