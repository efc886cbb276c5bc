#!/bin/sh
# shellcheck shell=sh
#
# plunder agent: /init of the in-memory OS every host boots into while it is not provisioned.
#
# POSIX sh for busybox ash, with busybox applets only. It reports the host's hardware to the
# boot service, then polls for work: stream an OS image to disk and seed cloud-init, wipe the
# disks, or reboot. The protocol is plain HTTP with key=value bodies so that no JSON has to be
# parsed here; the only JSON (the inspection report) is written, never read.
#
# Kernel command line: plunder.server=http://A.B.C.D:PORT plunder.mac=<mac>
# The boot service puts no token in an iPXE script (anyone may fetch any host's): the agent's
# first call, POST .../lookup, is answered with the token of this boot, once per boot; it is
# kept in /run (so a restarted agent keeps it) and asked for again only when it is refused.
# (plunder.token=<t> on the command line, for a boot made by hand, is used instead of a lookup.)
# Every other request carries "Authorization: Bearer <token>". The token and the cloud-init data
# never reach the console: console lines are built from fixed words, phases and numbers.
# What the console shows is also kept in $RUN/agent.log (with the reports' messages) and sent to
# the boot service (POST .../log, its newest 64 KiB) after inspection, before a "done", with a
# failure and every half minute of an image write, which also reports its byte counts every
# few seconds (POST .../progress). Neither is needed: a boot service without them answers 404.
# Boot it with "quiet" (or loglevel=4 or lower): the kernel itself prints its command line at
# notice level.
#
# As PID 1 this script must never exit (the kernel panics when init dies), so the work loop
# runs in a subshell that is started again if it ever ends.

PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
umask 022

RUN=/run/plunder
SEED=$RUN/seed
MNT=/mnt/root
SERVER=
MAC=
TOKEN=
CMDLINE_TOKEN=
IFACE=
IMAGE_BYTES=
PROGRESS_SECONDS=5
LOG_BYTES=65536

log() {
	echo "plunder-agent: $*"
	note "$*"
}

# note TEXT: into the boot's log only (sent to the boot service), with the seconds since boot.
note() {
	read -r note_uptime _ 2>/dev/null </proc/uptime
	printf '[%s] %s\n' "${note_uptime:-?}" "$*" 2>/dev/null >>"$RUN/agent.log"
}

# send_log: the boot's log so far (its newest LOG_BYTES) to the boot service, which keeps it for
# a person (plunderctl logs). Best effort, quietly, with files of its own: it may run beside a
# call of the main loop's (the progress of an image write).
send_log() {
	[ -n "$TOKEN" ] && [ -s "$RUN/agent.log" ] || return 0
	if [ "$(wc -c <"$RUN/agent.log")" -gt $((4 * LOG_BYTES)) ]; then
		tail -c "$LOG_BYTES" "$RUN/agent.log" >"$RUN/agent.log.new" && mv "$RUN/agent.log.new" "$RUN/agent.log"
	fi
	tail -c "$LOG_BYTES" "$RUN/agent.log" >"$RUN/log.upload"
	timeout 30 wget -q -O /dev/null --header "Authorization: Bearer $TOKEN" \
		--header "Content-Type: text/plain" --post-file "$RUN/log.upload" \
		"$SERVER/agent/v1/$MAC/log" 2>/dev/null
}

# --- the machine -------------------------------------------------------------------------

mount_pseudo_filesystems() {
	mkdir -p /proc /sys /dev /run /tmp /mnt
	mount -t proc proc /proc 2>/dev/null
	mount -t sysfs sysfs /sys 2>/dev/null
	mount -t devtmpfs devtmpfs /dev 2>/dev/null
	mkdir -p /dev/pts "$RUN" "$SEED" "$MNT"
	chmod 0700 "$RUN"
	# The kernel asks this helper for modules it wants (crypto algorithms, block drivers).
	echo /sbin/modprobe >/proc/sys/kernel/modprobe 2>/dev/null
	# Keep kernel chatter off the console; our lines are the progress a person reads.
	echo 1 >/proc/sys/kernel/printk 2>/dev/null
}

load_modules() {
	[ -r /etc/plunder/modules ] || return 0
	while read -r module; do
		[ -n "$module" ] && modprobe "$module" 2>/dev/null
	done </etc/plunder/modules
}

read_cmdline() {
	set -f
	# shellcheck disable=SC2013 # words, not lines, are wanted
	for word in $(cat /proc/cmdline); do
		case $word in
		plunder.server=*) SERVER=${word#*=} ;;
		plunder.mac=*) MAC=$(echo "${word#*=}" | tr 'A-F' 'a-f') ;;
		plunder.token=*) CMDLINE_TOKEN=${word#*=} ;;
		esac
	done
	set +f
	SERVER=${SERVER%/}
}

# The interface that carries $MAC; without plunder.mac, the first Ethernet interface.
find_interface() {
	for dev in /sys/class/net/*; do
		name=${dev##*/}
		[ "$name" = lo ] && continue
		address=$(cat "$dev/address" 2>/dev/null)
		if [ -z "$MAC" ] || [ "$address" = "$MAC" ]; then
			IFACE=$name
			[ -n "$MAC" ] || MAC=$address
			return 0
		fi
	done
	return 1
}

write_udhcpc_script() {
	cat >"$RUN/udhcpc.script" <<'EOF'
#!/bin/sh
# udhcpc calls this on each DHCP event; only the address and the default route are wanted.
# shellcheck disable=SC2154 # udhcpc passes interface, ip, mask and router in the environment
case $1 in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/$mask "; then
		ip -4 addr flush dev "$interface"
		ip addr add "$ip/$mask" dev "$interface"
	fi
	if [ -n "$router" ]; then
		ip route replace default via "${router%% *}" dev "$interface"
	fi
	echo "$ip" >/run/plunder/address
	;;
esac
exit 0
EOF
	chmod 0755 "$RUN/udhcpc.script"
}

bring_up_network() {
	ip link set lo up
	tries=0
	until find_interface; do
		tries=$((tries + 1))
		if [ $tries -ge 30 ]; then
			log "no network interface with MAC ${MAC:-any}"
			return 1
		fi
		sleep 1
	done
	log "interface $IFACE ($MAC)"
	write_udhcpc_script
	ip link set "$IFACE" up
	rm -f "$RUN/address"
	# A restarted agent takes the lease over from the udhcpc it started before.
	[ -s "$RUN/udhcpc.pid" ] && kill "$(cat "$RUN/udhcpc.pid")" 2>/dev/null
	# Without -q udhcpc stays (in the background) and renews the lease while the agent runs.
	udhcpc -i "$IFACE" -s "$RUN/udhcpc.script" -t 10 -T 2 -b -p "$RUN/udhcpc.pid" >/dev/null 2>&1
	tries=0
	until [ -s "$RUN/address" ]; do
		tries=$((tries + 1))
		if [ $tries -ge 300 ]; then
			log "no DHCP lease on $IFACE yet"
			return 1
		fi
		sleep 0.2
	done
	log "address $(cat "$RUN/address")"
}

# --- HTTP --------------------------------------------------------------------------------

# api_get PATH OUT: GET {server}/agent/v1/{mac}/PATH into OUT. 0: ok, 4: 404, 3: 403 (the
# token was refused), 1: other failure.
api_get() {
	timeout 60 wget -q -O "$2" --header "Authorization: Bearer $TOKEN" \
		"$SERVER/agent/v1/$MAC/$1" 2>"$RUN/wget.err"
	http_result $?
}

# api_post PATH CONTENT-TYPE BODY-FILE: POST the file's contents. Same results as api_get.
api_post() {
	timeout 60 wget -q -O "$RUN/post.out" --header "Authorization: Bearer $TOKEN" \
		--header "Content-Type: $2" --post-file "$3" "$SERVER/agent/v1/$MAC/$1" 2>"$RUN/wget.err"
	http_result $?
}

http_result() {
	[ "$1" -eq 0 ] && return 0
	grep -q ' 404 ' "$RUN/wget.err" 2>/dev/null && return 4
	grep -q ' 403 ' "$RUN/wget.err" 2>/dev/null && return 3
	grep -q ' 409 ' "$RUN/wget.err" 2>/dev/null && return 5
	return 1
}

# lookup: the token of this boot. Kept in $RUN; else asked for until the boot service gives it
# (409: it was given already, to this boot's first lookup; the agent keeps asking, visibly).
# Each lookup carries this boot's nonce: a lookup whose answer was lost (the service restarted,
# the connection dropped) is answered again with this boot's token, and nobody else's is.
lookup() {
	if [ -s "$RUN/token" ]; then
		TOKEN=$(cat "$RUN/token")
		return 0
	fi
	if [ ! -s "$RUN/nonce" ]; then
		(
			umask 077
			head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN/nonce"
		)
	fi
	tries=0
	until timeout 60 wget -q -O "$RUN/lookup.out" --post-data "mac=$MAC&nonce=$(cat "$RUN/nonce")" \
		"$SERVER/agent/v1/$MAC/lookup" 2>"$RUN/wget.err"; do
		tries=$((tries + 1))
		[ $((tries % 15)) -eq 1 ] && log "lookup failed: $(http_error)"
		sleep 2
	done
	TOKEN=$(sed -n 's/^token=//p' "$RUN/lookup.out" | head -n 1 | tr -d '\r')
	rm -f "$RUN/lookup.out"
	(
		umask 077
		printf '%s\n' "$TOKEN" >"$RUN/token"
	)
	log "lookup answered: this boot's token received"
}

# The error line of the last wget, for a status message (it names no URL, header or body).
http_error() {
	head -n 1 "$RUN/wget.err" 2>/dev/null | tr -d '\r' | sed 's/^wget: //'
}

# report PHASE REASON MESSAGE [BYTES] [DISK_BPS] [IMAGE_BYTES]: POST the status as key=value
# lines. Progress is sent once and may be missed. An outcome (done, failed) must arrive: the host
# reboots after a provisioning's "done", and a reboot the boot service never heard of reads as a
# write cut off (ProvisioningInterrupted). So an outcome is sent until the boot service takes
# it, however long it or its API server is away (a restart); only a refusal ends that, with
# status 1 (403: this boot's token is void; 409: no work under way any more, which is also the
# answer to a "done" already recorded whose first answer was lost). A provisioning's "done" is
# followed by the reboot either way: what the host boots next is the boot service's decision.
# The boot's log goes first: none is taken after the write ends.
report() {
	message=$(printf '%s' "$3" | tr '\r\n' '  ' | cut -c1-200)
	printf 'phase=%s\nreason=%s\nmessage=%s\nbytes=%s\ndisk_bps=%s\nimage_bytes=%s\n' "$1" "$2" \
		"$message" "${4:-0}" "${5:-}" "${6:-}" >"$RUN/status.txt"
	log "status $1 $2${4:+ bytes=$4}"
	note "  $message"
	case $1 in
	done | failed) send_log ;;
	*)
		api_post status text/plain "$RUN/status.txt" || log "status report failed: $(http_error)"
		return 0
		;;
	esac
	failures=0
	while :; do
		api_post status text/plain "$RUN/status.txt"
		result=$?
		[ $result -eq 0 ] && return 0
		if [ $result -eq 3 ] || [ $result -eq 5 ]; then
			log "status $1 refused: $(http_error)"
			return 1
		fi
		failures=$((failures + 1))
		# One line now and then, not one every try, while the service is away.
		[ $((failures % 15)) -eq 1 ] && log "status report failed: $(http_error); sending it again"
		sleep 2
	done
}

# --- inspection --------------------------------------------------------------------------

# json_string TEXT: TEXT as a JSON string. Bytes outside printable ASCII become '?', so the
# result is valid JSON whatever firmware or a disk puts in its strings.
json_string() {
	printf '%s' "$1" | tr -c '\11\12\15\40-\176' '?' | awk '
		BEGIN {
			RS = "\001"
			for (i = 1; i < 32; i++) esc[sprintf("%c", i)] = sprintf("\\u%04x", i)
			esc["\""] = "\\\""; esc["\\"] = "\\\\"; esc["\t"] = "\\t"; esc["\n"] = "\\n"
			esc["\r"] = "\\r"
			printf "\""
		}
		{
			n = length($0)
			for (i = 1; i <= n; i++) {
				c = substr($0, i, 1)
				printf "%s", ((c in esc) ? esc[c] : c)
			}
		}
		END { printf "\"" }'
}

# json_string_or_null TEXT: null for an empty TEXT.
json_string_or_null() {
	if [ -n "$1" ]; then json_string "$1"; else printf 'null'; fi
}

# first_line FILE: the file's first line without surrounding blanks ("" if unreadable).
first_line() {
	head -n 1 "$1" 2>/dev/null | tr -d '\000\r' | sed 's/^[[:space:]]*//; s/[[:space:]]*$//'
}

# The disks worth reporting and wiping: whole block devices, not loops, RAM or CD drives.
list_disks() {
	for dev in /sys/block/*; do
		name=${dev##*/}
		case $name in
		loop* | ram* | zram* | sr* | fd* | nbd* | dm-* | md*) continue ;;
		esac
		[ "$(cat "$dev/size" 2>/dev/null || echo 0)" -gt 0 ] || continue
		echo "$name"
	done
}

disk_bytes() {
	echo $(($(cat "/sys/block/$1/size") * 512))
}

disk_serial() {
	serial=$(first_line "/sys/block/$1/serial")
	[ -n "$serial" ] || serial=$(first_line "/sys/block/$1/device/serial")
	if [ -z "$serial" ] && [ -r "/sys/block/$1/device/vpd_pg80" ]; then
		serial=$(tail -c +5 "/sys/block/$1/device/vpd_pg80" | tr -d '\000' |
			sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
	fi
	printf '%s' "$serial"
}

inspection_json() {
	dmi=/sys/class/dmi/id
	cpus=$(grep -c '^processor' /proc/cpuinfo)
	cpu_model=$(grep -m 1 '^model name' /proc/cpuinfo | sed 's/^[^:]*:[[:space:]]*//')
	mem_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
	printf '{"systemVendor":%s,' "$(json_string "$(first_line $dmi/sys_vendor)")"
	printf '"productName":%s,' "$(json_string "$(first_line $dmi/product_name)")"
	printf '"serialNumber":%s,' "$(json_string "$(first_line $dmi/product_serial)")"
	printf '"cpu":{"count":%d,"model":%s},' "${cpus:-0}" "$(json_string "$cpu_model")"
	printf '"memoryMiB":%d,"disks":[' "$((${mem_kib:-0} / 1024))"
	separator=
	for disk in $(list_disks); do
		rotational=false
		[ "$(first_line "/sys/block/$disk/queue/rotational")" = 1 ] && rotational=true
		printf '%s{"name":%s,"sizeBytes":%s,"model":%s,"serial":%s,"rotational":%s}' \
			"$separator" "$(json_string "/dev/$disk")" "$(disk_bytes "$disk")" \
			"$(json_string_or_null "$(first_line "/sys/block/$disk/device/model")")" \
			"$(json_string_or_null "$(disk_serial "$disk")")" "$rotational"
		separator=,
	done
	printf '],"nics":['
	separator=
	for dev in /sys/class/net/*; do
		name=${dev##*/}
		[ "$name" = lo ] && continue
		address=$(ip -o -4 addr show dev "$name" 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')
		printf '%s{"name":%s,"mac":%s,"ip":%s}' "$separator" "$(json_string "$name")" \
			"$(json_string "$(first_line "$dev/address")")" "$(json_string_or_null "$address")"
		separator=,
	done
	printf ']}\n'
}

inspect() {
	inspection_json >"$RUN/inspection.json"
	tries=0
	until api_post inspection application/json "$RUN/inspection.json"; do
		tries=$((tries + 1))
		log "inspection report failed: $(http_error)"
		# A server without inspection must not keep the host from taking work.
		[ $tries -ge 30 ] && return 1
		sleep 2
	done
	log "inspection reported"
}

# --- work --------------------------------------------------------------------------------

# work_value KEY: the value of KEY= in the last work answer.
work_value() {
	sed -n "s/^$1=//p" "$RUN/work.txt" | head -n 1 | tr -d '\r'
}

# poll_seconds: how long to wait before asking for work again: the boot service's retry= (it
# spreads a big fleet's polls), 2 if it sent none or nonsense, never more than 300.
poll_seconds() {
	retry=$(work_value retry)
	case $retry in
	'' | *[!0-9]*) echo 2 ;;
	*) [ "$retry" -gt 300 ] && echo 300 || echo "$retry" ;;
	esac
}

# partition_path DISK N: /dev/vda 1 -> /dev/vda1, /dev/nvme0n1 1 -> /dev/nvme0n1p1.
partition_path() {
	case $1 in
	*[0-9]) echo "$1p$2" ;;
	*) echo "$1$2" ;;
	esac
}

# zero_ends DEVICE: zero the first and last MiB, where partition tables and RAID/LVM/
# filesystem signatures live, so nothing on the disk is recognised or booted any more.
zero_ends() {
	name=${1##*/}
	size=$(disk_bytes "$name")
	mib=1048576
	dd if=/dev/zero of="$1" bs=$mib count=1 oflag=direct conv=notrunc 2>/dev/null || return 1
	if [ "$size" -gt $((2 * mib)) ]; then
		dd if=/dev/zero of="$1" bs=$mib count=1 seek=$((size - mib)) oflag=seek_bytes,direct \
			conv=notrunc 2>/dev/null || return 1
	fi
	sync
	blockdev --rereadpt "$1" 2>/dev/null
	return 0
}

# provision_failed REASON MESSAGE [BYTES]: after writing began, make the disk unbootable, then
# say so (a half-written or unverified image must never boot).
provision_failed() {
	zero_ends "$ROOT" || log "could not zero $ROOT"
	report failed "$1" "$2" "${3:-0}"
	rm -f "$SEED"/*
}

fetch_cloud_init() {
	rm -f "$SEED"/*
	for item in meta-data user-data vendor-data network-config; do
		api_get "cloud-init/$item" "$SEED/$item.partial"
		result=$?
		# network-config and vendor-data are optional: a 404 means none
		if [ $result -eq 4 ] && { [ "$item" = network-config ] || [ "$item" = vendor-data ]; }; then
			rm -f "$SEED/$item.partial"
			continue
		fi
		if [ $result -ne 0 ]; then
			rm -f "$SEED/$item.partial"
			echo "cloud-init $item: $(http_error)"
			return 1
		fi
		mv "$SEED/$item.partial" "$SEED/$item"
	done
	chmod 0600 "$SEED"/*
}

# uptime_centiseconds: the time since boot, in hundredths of a second.
uptime_centiseconds() {
	tr -d '.' </proc/uptime | cut -d' ' -f1
}

# disk_write_speed DEVICE CAPACITY: bytes per second of direct writes to the start of DEVICE
# (what the image overwrites next), for the benchmark's floor; empty if it cannot be timed.
disk_write_speed() {
	probe=$((16 * 1048576))
	[ "$2" -ge "$probe" ] 2>/dev/null || return 0
	begun=$(uptime_centiseconds)
	dd if=/dev/zero of="$1" bs=1M count=16 oflag=direct conv=notrunc 2>/dev/null || return 0
	took=$(($(uptime_centiseconds) - begun))
	[ "$took" -gt 0 ] && echo $((probe * 100 / took))
}

# image_wget SECONDS URL ARGS...: wget URL, for at most SECONDS (0: no limit). The token goes
# only to the boot service itself, never to another server an image_url may name.
image_wget() {
	limit=$1
	url=$2
	shift 2
	set -- "$@" "$url"
	case $url in
	"$SERVER"/*) set -- --header "Authorization: Bearer $TOKEN" "$@" ;;
	esac
	if [ "$limit" -gt 0 ]; then
		timeout "$limit" wget "$@"
	else
		wget "$@"
	fi
}

# image_length URL: the Content-Length the server announces (empty if none). 4: 404.
image_length() {
	image_wget 60 "$1" -q -S --spider >"$RUN/spider.out" 2>&1
	result=$?
	cp "$RUN/spider.out" "$RUN/wget.err"
	http_result $result || return $?
	awk 'tolower($1) == "content-length:" { print $2 + 0 }' "$RUN/spider.out" | tail -n 1
}

# The image's bytes as downloaded, through the checksum, decompressed onto the disk. The
# checksum covers the file at image_url (as sha256sum prints it for the published file).
# Under emulation every process in the pipe costs CPU time: nothing counts the bytes but dd,
# whose records (whole MiB; a last, partial one counts as a whole) say what was written.
stream_image() {
	fifo=$RUN/image.fifo
	rm -f "$fifo" "$RUN"/*.rc "$RUN/sum.out"
	mkfifo "$fifo"
	"${SUM_TYPE}sum" <"$fifo" >"$RUN/sum.out" &
	sum_pid=$!
	progress_monitor "$sum_pid" &
	monitor_pid=$!
	case $FORMAT in
	raw-gzip) decompress="gunzip -c" ;;
	raw-xz) decompress="unxz -c" ;;
	raw-lzop) decompress="lzop -dc" ;;
	*) decompress="cat" ;;
	esac
	{
		image_wget 0 "$URL" -q -O - 2>"$RUN/wget.err"
		echo $? >"$RUN/download.rc"
	} | tee "$fifo" | {
		$decompress 2>/dev/null
		echo $? >"$RUN/decompress.rc"
	} | dd of="$ROOT" bs=1M iflag=fullblock oflag=direct conv=notrunc 2>"$RUN/dd.err"
	echo $? >"$RUN/dd.rc"
	wait "$sum_pid"
	kill "$monitor_pid" 2>/dev/null
	wait "$monitor_pid" 2>/dev/null
	rm -f "$fifo"
}

# mib BYTES: whole MiB.
mib() {
	echo $((${1:-0} / 1048576))
}

# progress_monitor SUM_PID: while the image streams, every PROGRESS_SECONDS, its byte counts:
# downloaded (what the checksum process has read: every byte of the download passes it),
# written (the disk's own count of sectors written since the write began) and the total the
# server announced (IMAGE_BYTES). Runs in the background; its calls use files of their own.
progress_monitor() {
	stat_file=/sys/class/block/${ROOT##*/}/stat
	base=$(awk '{ print $7 }' "$stat_file" 2>/dev/null)
	ticks=0
	while sleep "$PROGRESS_SECONDS"; do
		[ -d "/proc/$1" ] || return 0
		downloaded=$(awk '$1 == "rchar:" { print $2 }' "/proc/$1/io" 2>/dev/null)
		sectors=$(awk '{ print $7 }' "$stat_file" 2>/dev/null)
		written=$(((${sectors:-0} - ${base:-0}) * 512))
		printf 'downloaded=%s\nwritten=%s\ntotal=%s\n' "$downloaded" "$written" "$IMAGE_BYTES" \
			>"$RUN/progress.txt"
		timeout 10 wget -q -O /dev/null --header "Authorization: Bearer $TOKEN" \
			--header "Content-Type: text/plain" --post-file "$RUN/progress.txt" \
			"$SERVER/agent/v1/$MAC/progress" 2>/dev/null
		log "writing: $(mib "$downloaded")${IMAGE_BYTES:+ of $(mib "$IMAGE_BYTES")} MiB downloaded, $(mib "$written") MiB written"
		ticks=$((ticks + 1))
		[ $((ticks % 6)) -eq 0 ] && send_log
	done
}

# written_bytes: what dd wrote, from its "F+P records out" line (records of 1 MiB).
written_bytes() {
	awk -F '[+ ]' '/records out$/ { n = $1 + $2 } END { printf "%.0f\n", n * 1048576 }' \
		"$RUN/dd.err"
}

# published_checksum URL NAME: the digest a checksum file (as sha256sum writes it) gives for
# the file NAME, or its only line's; on failure, why (and a non-zero status).
published_checksum() {
	if ! image_wget 30 "$1" -q -O "$RUN/checksum" 2>"$RUN/wget.err"; then
		echo "the checksum file $1: $(http_error)"
		return 1
	fi
	digest=$(awk -v name="$2" '
		{ lines++; only = $1 }
		$2 == name || $2 == "*" name { print $1; found = 1; exit }
		END { if (!found && lines == 1) print only }' "$RUN/checksum")
	if [ -z "$digest" ]; then
		echo "the checksum file $1 names no $2"
		return 1
	fi
	echo "$digest"
}

provision() {
	URL=$(work_value image_url)
	SUM=$(work_value image_checksum)
	SUM_TYPE=$(work_value image_checksum_type)
	FORMAT=$(work_value image_format)
	ROOT=$(work_value root_device)
	: "${FORMAT:=raw}"
	log "provision: $FORMAT image to $ROOT"
	if [ -z "$URL" ] || [ -z "$SUM" ]; then
		report failed InvalidWork "image_url and image_checksum are required"
		return 1
	fi
	case $SUM_TYPE in
	sha256 | sha512) ;;
	*)
		report failed InvalidWork "image_checksum_type must be sha256 or sha512"
		return 1
		;;
	esac
	case $FORMAT in
	raw | raw-gzip | raw-xz | raw-lzop) ;;
	*)
		report failed InvalidWork "image_format must be raw, raw-gzip, raw-xz or raw-lzop"
		return 1
		;;
	esac
	if [ ! -b "$ROOT" ]; then
		report failed RootDeviceNotFound "no block device $ROOT"
		return 1
	fi
	if ! problem=$(fetch_cloud_init); then
		report failed CloudInitUnavailable "$problem"
		return 1
	fi
	capacity=$(disk_bytes "${ROOT##*/}")
	length=$(image_length "$URL")
	case $? in
	0) ;;
	*)
		report failed ImageDownloadFailed "$(http_error)"
		return 1
		;;
	esac
	if [ "$FORMAT" = raw ] && [ -n "$length" ] && [ "$length" -gt "$capacity" ]; then
		report failed DiskTooSmall "image is $length bytes, $ROOT holds $capacity"
		return 1
	fi

	case $SUM in
	http://* | https://*)
		if ! SUM=$(published_checksum "$SUM" "${URL##*/}"); then
			report failed ChecksumUnavailable "$SUM"
			return 1
		fi
		;;
	esac
	SUM=$(echo "$SUM" | tr 'A-F' 'a-f')

	speed=$(disk_write_speed "$ROOT" "$capacity")
	IMAGE_BYTES=$length
	report writing Writing "streaming $FORMAT image to $ROOT" 0 "$speed" "$length"
	started=$(cut -d. -f1 /proc/uptime)
	stream_image
	written=$(written_bytes)
	seconds=$(($(cut -d. -f1 /proc/uptime) - started))
	# A full disk breaks the pipe (and so the download): look at the writer first.
	if [ "$(cat "$RUN/dd.rc")" != 0 ]; then
		if grep -q 'No space left' "$RUN/dd.err" || [ "$written" -ge "$capacity" ]; then
			provision_failed DiskTooSmall "the image does not fit on $ROOT ($capacity bytes)" \
				"$written"
		else
			note "dd: $(grep -v 'records' "$RUN/dd.err" | head -n 3 | tr '\n' ' ')"
			provision_failed DiskWriteFailed "writing $ROOT failed" "$written"
		fi
		return 1
	fi
	if [ "$(cat "$RUN/download.rc")" != 0 ]; then
		provision_failed ImageDownloadFailed "$(http_error)" "$written"
		return 1
	fi
	if [ "$(cat "$RUN/decompress.rc")" != 0 ]; then
		provision_failed ImageDecompressionFailed "the image is not valid $FORMAT" "$written"
		return 1
	fi
	log "wrote $written bytes in ${seconds}s"

	report verifying Verifying "$SUM_TYPE of the downloaded image" "$written"
	actual=$(cut -d ' ' -f 1 "$RUN/sum.out")
	if [ "$actual" != "$SUM" ]; then
		provision_failed ChecksumMismatch "the image's $SUM_TYPE is $actual" "$written"
		return 1
	fi

	report seeding Seeding "writing the cloud-init NoCloud seed" "$written"
	if ! seed_cloud_init; then
		provision_failed SeedFailed "no ext4 root filesystem with /etc on $ROOT" "$written"
		return 1
	fi
	rm -f "$SEED"/*
	sync
	report "done" Provisioned "image written and seeded in ${seconds}s" "$written" || true
	log "rebooting into the installed OS"
	sync
	reboot -f
}

# Mount the image's root filesystem (the first ext4 partition holding /etc) and write the
# NoCloud seed where cloud-init looks first.
seed_cloud_init() {
	sync
	blockdev --rereadpt "$ROOT" 2>/dev/null
	partprobe "$ROOT" 2>/dev/null
	first=$(partition_path "$ROOT" 1)
	tries=0
	until [ -b "$first" ] || [ $tries -ge 20 ]; do
		tries=$((tries + 1))
		sleep 0.5
	done
	name=${ROOT##*/}
	for part in /sys/block/"$name"/"$name"*; do
		[ -e "$part/partition" ] || continue
		device=/dev/${part##*/}
		mount -t ext4 "$device" "$MNT" 2>/dev/null || continue
		if [ -d "$MNT/etc" ]; then
			write_seed "$MNT/var/lib/cloud/seed/nocloud"
			result=$?
			umount "$MNT"
			[ $result -eq 0 ] && log "seeded $device" && return 0
			return 1
		fi
		umount "$MNT"
	done
	return 1
}

write_seed() {
	mkdir -p "$1" || return 1
	rm -f "$1/meta-data" "$1/user-data" "$1/vendor-data" "$1/network-config"
	(
		umask 077
		for item in meta-data user-data vendor-data network-config; do
			[ -f "$SEED/$item" ] || continue
			cp "$SEED/$item" "$1/$item" || exit 1
			# user-data holds the bootstrap secret; vendor-data the phone-home token
			case $item in user-data | vendor-data) ;; *) chmod 0644 "$1/$item" ;; esac
		done
	) || return 1
	chmod 0600 "$1/user-data" "$1/vendor-data" 2>/dev/null
	sync
}

wipe() {
	mode=$(work_value wipe_mode)
	: "${mode:=metadata}"
	case $mode in
	metadata | full) ;;
	*)
		report failed InvalidWork "wipe_mode must be metadata or full"
		return 1
		;;
	esac
	log "wipe: $mode"
	wiped=
	for disk in $(list_disks); do
		if [ "$mode" = full ]; then
			size=$(disk_bytes "$disk")
			if ! dd if=/dev/zero of="/dev/$disk" bs=4M count="$size" iflag=count_bytes,fullblock \
				oflag=direct conv=notrunc 2>/dev/null; then
				report failed WipeFailed "zeroing /dev/$disk failed"
				return 1
			fi
		fi
		if ! zero_ends "/dev/$disk"; then
			report failed WipeFailed "zeroing /dev/$disk failed"
			return 1
		fi
		wiped="$wiped /dev/$disk"
	done
	sync
	report "done" Wiped "$mode wipe of${wiped:- no disks}"
}

work_loop() {
	failures=0
	while :; do
		api_get work "$RUN/work.txt"
		result=$?
		if [ $result -eq 3 ] && [ -z "$CMDLINE_TOKEN" ]; then
			# The controller asked for a new boot (a wipe): this boot's token is void.
			log "the token was refused; looking up a new one"
			rm -f "$RUN/token"
			lookup
			continue
		fi
		if [ $result -ne 0 ]; then
			failures=$((failures + 1))
			# One line now and then, not one every poll, while the server is away.
			[ $((failures % 15)) -eq 1 ] && log "asking for work failed: $(http_error)"
			sleep 2
			continue
		fi
		failures=0
		action=$(work_value action)
		case $action in
		wait) sleep "$(poll_seconds)" ;;
		provision) provision || sleep 2 ;;
		wipe) wipe || sleep 2 ;;
		reboot)
			log "rebooting"
			sync
			reboot -f
			;;
		*)
			log "unknown action '$(printf '%s' "$action" | tr -cd 'a-z_-' | cut -c1-20)'"
			sleep 2
			;;
		esac
	done
}

main() {
	mount_pseudo_filesystems
	log "starting ($(cat /etc/plunder/version 2>/dev/null))"
	read_cmdline
	load_modules
	until bring_up_network; do sleep 5; done
	until [ -n "$SERVER" ]; do
		log "no plunder.server= on the kernel command line"
		sleep 30
	done
	if [ -n "$CMDLINE_TOKEN" ]; then
		TOKEN=$CMDLINE_TOKEN
	else
		lookup
	fi
	inspect
	send_log
	work_loop
}

# Sourced by the unit tests with PLUNDER_AGENT_FUNCTIONS_ONLY=1: define the functions, run nothing.
[ "${PLUNDER_AGENT_FUNCTIONS_ONLY:-}" = 1 ] && return 0

if [ "$$" -eq 1 ]; then
	mount_pseudo_filesystems
	while :; do
		(main)
		log "agent ended; starting it again"
		sleep 5
	done
fi
main
