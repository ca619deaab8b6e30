// devpeak.c: a GPU's peak tensor-core rate and memory bandwidth, the
// denominators of the benchmarks' MFU and bandwidth use (ops.h). The
// datasheet's figures for the parts pq is measured on, since they are what
// every other report divides by (the attributes' peak clock is the boost
// clock, above the one the datasheet's TFLOP/s assume: an H100 SXM's 1,980
// MHz would make 1,070, not 989); the attributes otherwise. Plain C, so the
// CPU's tests check it.
#include <string.h>

#include "ops.h"

// Parts by a piece of their name, first match wins (so the longer names
// first: "GH200" holds "H200", "H100 NVL" holds "H100"). A GB/s of 0: the
// part comes with several memories; the attributes say which.
static const struct {
    const char *part;
    double tflops, gbs;
} sheets[] = {
    {"GH200", 989, 0},        {"H200 NVL", 835, 4800},  {"H200", 989, 4800}, {"H100 NVL", 835, 3900},
    {"H100 PCIe", 756, 2000}, {"H800 PCIe", 756, 2000}, {"H100", 989, 3350}, {"H800", 989, 3350},
    {"B200", 2250, 8000},     {"B100", 1750, 8000},     {"A100", 312, 0},    {"A800", 312, 0},
    {"L40S", 362, 864},       {"L40", 181, 864},        {"L4", 121, 300},
};

// dense bf16 FLOPs a cycle per SM, f32 accumulation, by compute capability (0:
// not known)
static double per_sm_clock(int major, int minor) {
    switch (major) {
    case 10:
        return 8192; // Blackwell datacenter parts
    case 9:
        return 4096; // Hopper
    case 8:
        return minor == 0 ? 2048 : 1024; // A100; Ampere and Ada workstation parts
    case 7:
        return 1024; // Volta, Turing: f16 only, at f16's rate
    default:
        return 0;
    }
}

const char *pq_dev_peaks(const PqDevInfo *d, double *tflops, double *gbs) {
    *tflops = d->sms > 0 && d->clock_khz > 0
                  ? d->sms * (d->clock_khz * 1e3) * per_sm_clock(d->cc_major, d->cc_minor) / 1e12
                  : 0;
    *gbs = d->mem_clock_khz > 0 && d->bus_bits > 0 ? 2 * (d->mem_clock_khz * 1e3) * (d->bus_bits / 8) / 1e9 : 0;
    for (size_t i = 0; i < sizeof sheets / sizeof *sheets; i++)
        if (strstr(d->name, sheets[i].part)) {
            *tflops = sheets[i].tflops;
            if (sheets[i].gbs > 0) {
                *gbs = sheets[i].gbs;
                return "the datasheet";
            }
            return *gbs > 0 ? "the datasheet; GB/s from the memory clock and bus" : "the datasheet";
        }
    return *tflops > 0 || *gbs > 0 ? "the device's clocks and widths" : "nothing known";
}
