#!/usr/bin/env bash
# Starts a private ClickHouse server (Debian's clickhouse-server) on 127.0.0.1 with a data
# directory of its own, and waits until it answers.
#   .ci/clickhouse-server.sh DIR HTTP_PORT     → prints the URL; the PID is in DIR/server.pid
# Used by .ci/run and by the outage test (which stops and restarts its own server).
set -euo pipefail
dir=$(realpath -m "$1")
http_port=${2:-8123}
tcp_port=$((http_port + 877))
mkdir -p "$dir"/{data,tmp,user_files,log,format_schemas}
cp /etc/clickhouse-server/users.xml "$dir/users.xml"
cat > "$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/log/server.log</log>
        <errorlog>$dir/log/error.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <http_port>$http_port</http_port>
    <tcp_port>$tcp_port</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <timezone>UTC</timezone>
</yandex>
XML
server=$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)
"$server" --config-file="$dir/config.xml" --pid-file="$dir/server.pid" >"$dir/log/stdout.log" 2>&1 &
echo $! > "$dir/server.pid"
for _ in $(seq 1 120); do
    if curl -sf "http://127.0.0.1:$http_port/ping" >/dev/null 2>&1; then
        echo "http://127.0.0.1:$http_port"
        exit 0
    fi
    sleep 0.5
done
echo "clickhouse-server did not answer on port $http_port; log:" >&2
tail -20 "$dir/log/stdout.log" "$dir/log/error.log" >&2 || true
exit 1
