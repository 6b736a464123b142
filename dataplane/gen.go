package dataplane

// The BPF object is compiled from bpf/roam.c (the XDP and the tc program in
// one translation unit, sharing their maps) by bpf2go (a go.mod tool); the
// generated .o and _bpfel.go files are committed so `go build` needs no
// clang. BPF_CLANG, BPF_STRIP and BPF_CFLAGS come from the Makefile (which
// adds the machine's multiarch include directory for asm/types.h). Go types are
// generated for the types named with -type only (-no-global-types).

//go:generate go tool bpf2go -cc $BPF_CLANG -cflags "$BPF_CFLAGS -mcpu=v3" -strip $BPF_STRIP -target bpfel -no-global-types -type frontend_key -type target -type service -type ct_key -type ct4_key -type ct_value -type nat_value -type config -type counter -type target_key -type target_counter -type srv6_config -type lpm6_key -type srv6_local roam ../bpf/roam.c -- -I../bpf
