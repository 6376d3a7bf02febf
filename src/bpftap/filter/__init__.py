"""pcap-filter expressions (tcpdump syntax) in rules: libpcap compiles, bpftap runs them in the kernel."""
