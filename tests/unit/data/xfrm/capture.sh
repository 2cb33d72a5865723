#!/bin/sh
# Capture the netlink requests that `ip xfrm` sends, one file per command.
#
# Each output file starts with the command as a "# ip ..." line, followed by
# the request bytes as hex, 16 bytes a line. The commands run in a throwaway
# network namespace; the kernel may reject an SA (no ESP, unknown algorithm),
# but strace records the request before the kernel answers.
#
# Usage, as root, from this directory: sh capture.sh
# Captured with iproute2 6.1.0 (Debian 12) and strace 6.1.
set -eu

NS="rmb-xfrm-capture-$$"
ip netns add "$NS"
trap 'ip netns delete "$NS"' EXIT

capture() {
    name="$1"
    shift
    out="$name.hex"
    echo "# ip $*" > "$out"
    # -e write=3,4 dumps every byte that sendmsg writes to the netlink socket.
    ip netns exec "$NS" strace -qq -e trace=sendmsg -e write=3,4 -s 0 ip "$@" 2>&1 >/dev/null \
        | sed -n 's/^ | [0-9a-f]\{5\}  \(.\{48\}\).*/\1/p' \
        | tr -s ' ' '\n' | grep . | paste -sd' ' | fold -w 48 | sed 's/ $//' >> "$out"
}

KEY20=0x0102030405060708090a0b0c0d0e0f1011121314
KEY36=0x0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324
KEY16=0x00112233445566778899aabbccddeeff
KEY32=0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
KEY48=0x${KEY32#0x}00112233445566778899aabbccddeeff
KEY64=0x${KEY32#0x}${KEY32#0x}

capture sa_gcm128_tunnel4 xfrm state add src 192.0.2.1 dst 198.51.100.1 proto esp spi 0x1000 \
    reqid 7 mode tunnel replay-window 32 aead 'rfc4106(gcm(aes))' $KEY20 128 \
    sel src 10.1.0.0/16 dst 10.2.0.0/16
capture sa_gcm256_esn_tunnel6 xfrm state add src 2001:db8:1::1 dst 2001:db8:2::1 proto esp \
    spi 0x2000 reqid 9 mode tunnel flag esn replay-window 1024 aead 'rfc4106(gcm(aes))' $KEY36 128 \
    sel src 2001:db8:a::/48 dst 2001:db8:b::/48
capture sa_chacha_natt4 xfrm state add src 192.0.2.1 dst 203.0.113.5 proto esp spi 0xc0ffee01 \
    reqid 11 mode tunnel replay-window 32 aead 'rfc7539esp(chacha20,poly1305)' $KEY36 128 \
    encap espinudp 4500 4501 0.0.0.0
capture sa_cbc_sha256_transport4 xfrm state add src 192.0.2.1 dst 198.51.100.1 proto esp \
    spi 0x3000 reqid 3 mode transport replay-window 64 enc 'cbc(aes)' $KEY16 \
    auth-trunc 'hmac(sha256)' $KEY32 128 \
    limit time-soft 3000 limit time-hard 3600 limit byte-soft 1000000 limit byte-hard 2000000 \
    limit packet-soft 1000 limit packet-hard 2000
capture sa_cbc_sha384_mark_ifid4 xfrm state add src 192.0.2.1 dst 198.51.100.1 proto esp \
    spi 0x3001 reqid 4 mode tunnel replay-window 32 enc 'cbc(aes)' $KEY32 \
    auth-trunc 'hmac(sha384)' $KEY48 192 mark 0x10 mask 0xff if_id 42
capture sa_cbc_sha512_tunnel6 xfrm state add src 2001:db8:1::1 dst 2001:db8:2::1 proto esp \
    spi 0x3002 reqid 5 mode tunnel replay-window 32 enc 'cbc(aes)' $KEY32 \
    auth-trunc 'hmac(sha512)' $KEY64 256
capture sa_delete4 xfrm state delete src 192.0.2.1 dst 198.51.100.1 proto esp spi 0x1000
capture sa_get6 xfrm state get src 2001:db8:1::1 dst 2001:db8:2::1 proto esp spi 0x2000
capture sa_flush_esp xfrm state flush proto esp

capture pol_out_tunnel4 xfrm policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out priority 100 \
    tmpl src 192.0.2.1 dst 198.51.100.1 proto esp reqid 7 mode tunnel
capture pol_fwd_mark_ifid6 xfrm policy add src 2001:db8:b::/48 dst 2001:db8:a::/48 dir fwd \
    priority 200 mark 0x10 mask 0xff if_id 42 \
    tmpl src 2001:db8:2::1 dst 2001:db8:1::1 proto esp reqid 9 mode tunnel
capture pol_block_in_udp4 xfrm policy add src 10.9.0.0/24 dst 10.8.0.0/24 proto udp dport 53 \
    dir in action block priority 10
capture pol_update_out4 xfrm policy update src 10.1.0.0/16 dst 10.2.0.0/16 dir out priority 100 \
    tmpl src 192.0.2.9 dst 203.0.113.5 proto esp reqid 7 mode tunnel
capture pol_delete_out4 xfrm policy delete src 10.1.0.0/16 dst 10.2.0.0/16 dir out
capture pol_flush xfrm policy flush
