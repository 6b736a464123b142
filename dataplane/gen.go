package dataplane

// The BPF objects are compiled from bpf/ by bpf2go (a go.mod tool); the
// generated .o and _bpfel.go files are committed so `go build` needs no clang.
// BPF_CLANG, BPF_STRIP and BPF_CFLAGS come from the Makefile (which adds the
// machine's multiarch include directory for asm/types.h). Both programs share
// bpf/'s types: they are generated once, from the XDP object; the TC object's
// Go file holds only its loader (-no-global-types).

//go:generate go tool bpf2go -cc $BPF_CLANG -cflags "$BPF_CFLAGS -mcpu=v3" -strip $BPF_STRIP -target bpfel -type frontend_key -type target -type service -type ct_key -type ct_value -type nat_value -type config -type counter -type target_key -type target_counter -type srv6_config -type lpm6_key -type srv6_local roamXDP ../bpf/xdp.c -- -I../bpf
//go:generate go tool bpf2go -cc $BPF_CLANG -cflags "$BPF_CFLAGS -mcpu=v3" -strip $BPF_STRIP -target bpfel -no-global-types roamTC ../bpf/tc.c -- -I../bpf
