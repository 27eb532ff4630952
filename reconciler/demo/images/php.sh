#!/usr/bin/env bash
# Builds the offline stand-in for php:8.3-apache: a Debian rootfs made by mmdebstrap (Debian's apache2 and
# libapache2-mod-php, plus php-cli) loaded with `docker load`, as the production VMs load theirs (about a minute;
# needs Debian's package mirror, never a registry). Usage: php.sh [IMAGE]  (default sdp-demo/php-apache:latest)
#
# Like the official image: PID 1 is Apache (prefork MPM, mod_php) in the foreground, started by
# /usr/local/bin/apache2-foreground (sources /etc/apache2/envvars, removes a stale pid file, then
# `exec apache2 -DFOREGROUND "$@"`) behind docker-php-entrypoint; CMD ["apache2-foreground"], port 80,
# WORKDIR /var/www/html, STOPSIGNAL SIGWINCH (graceful stop); the access log goes to /proc/self/fd/1 and the
# error log to /proc/self/fd/2 (`docker logs`); every `export X=...` of envvars is a default the container's
# environment can override; `apachectl -k graceful` reloads in place (same PID 1, new children); `php -l`
# works (php-cli). OPcache is installed but disabled, as in the official image, so a changed PHP file is
# served by the next request, graceful reload or not.
# Unlike it: PHP is Debian's (8.2 on bookworm, whatever the host's suite ships), not 8.3 built from source;
# its php.ini is Debian's production one (display_errors Off) in /etc/php/*/ rather than none in
# /usr/local/etc/php; extensions are Debian packages (curl, mbstring, xml, sqlite3 added here, no
# docker-php-ext-* scripts, no pecl, no phpize); no apt or ca-certificates in the image. Added on purpose:
# the site's DocumentRoot and a <Directory> (AllowOverride All, Require all granted) read
# ${APACHE_DOCUMENT_ROOT} (default /var/www/html, set with `docker run -e`) instead of the sed the official
# docs suggest, DirectoryIndex index.php index.html, and mod_rewrite enabled (.htaccess front controllers).
set -euo pipefail
image="${1:-sdp-demo/php-apache:latest}"
case "${image##*/}" in *:*) ;; *) image="$image:latest" ;; esac  # docker load wants a tag

if ! command -v mmdebstrap >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "mmdebstrap is not installed: apt-get install mmdebstrap" >&2
    exit 1
  fi
  echo "installing mmdebstrap (waiting for any running apt-get or dpkg)" >&2
  # A background `apt-get update` or install holds the locks: wait for them, and read the lists it leaves.
  for attempt in $(seq 1 20); do
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=60 mmdebstrap >/dev/null; then
      break
    fi
    [ "$attempt" = 20 ] && { echo "could not install mmdebstrap" >&2; exit 1; }
    apt-get update -qq -o DPkg::Lock::Timeout=60 >/dev/null 2>&1 || sleep 10
  done
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"

# Run by mmdebstrap once every package is installed; $1 is the rootfs.
cat > "$work/customize" <<'HOOK'
set -euo pipefail
root="$1"
conf="$root/etc/apache2"
php_module="$(basename "$(ls "$conf"/mods-available/php*.load | head -n 1)" .load)"
chroot "$root" a2dismod -q mpm_event >/dev/null
chroot "$root" a2enmod -q mpm_prefork "$php_module" rewrite >/dev/null
chroot "$root" phpdismod opcache

# As the official image: each `export X=value` of envvars becomes a default the environment can override.
sed -ri 's/^export ([^=]+)=(.*)$/: ${\1:=\2}\nexport \1/' "$conf/envvars"
cat >> "$conf/envvars" <<'EOF'

# The site's document root (sdp-demo): `docker run -e APACHE_DOCUMENT_ROOT=...` overrides it.
: ${APACHE_DOCUMENT_ROOT:=/var/www/html}
export APACHE_DOCUMENT_ROOT
EOF

cat > "$conf/sites-available/000-default.conf" <<'EOF'
<VirtualHost *:80>
	ServerAdmin webmaster@localhost
	DocumentRoot ${APACHE_DOCUMENT_ROOT}
	ErrorLog ${APACHE_LOG_DIR}/error.log
	CustomLog ${APACHE_LOG_DIR}/access.log combined
</VirtualHost>
EOF

cat > "$conf/conf-available/docker-php.conf" <<'EOF'
<FilesMatch \.php$>
	SetHandler application/x-httpd-php
</FilesMatch>

DirectoryIndex disabled
DirectoryIndex index.php index.html

<Directory /var/www/>
	Options -Indexes
	AllowOverride All
</Directory>

<Directory ${APACHE_DOCUMENT_ROOT}>
	Options -Indexes +FollowSymLinks
	AllowOverride All
	Require all granted
</Directory>
EOF
chroot "$root" a2enconf -q docker-php >/dev/null

# Logs to the container's stdout and stderr; the run, lock and log dirs usable by any --user. Inside the
# chroot: /var/run and /var/lock are absolute symlinks, which from outside would lead to the host's /run.
chroot "$root" bash -ec '
  . /etc/apache2/envvars
  for dir in "$APACHE_LOCK_DIR" "$APACHE_RUN_DIR" "$APACHE_LOG_DIR" /var/www/html; do
    rm -rf "$dir"
    mkdir -p "$dir"
    chown www-data:www-data "$dir"
    chmod 1777 "$dir"
  done
  ln -sfT /proc/self/fd/2 "$APACHE_LOG_DIR/error.log"
  ln -sfT /proc/self/fd/1 "$APACHE_LOG_DIR/access.log"
  ln -sfT /proc/self/fd/1 "$APACHE_LOG_DIR/other_vhosts_access.log"
'

cat > "$root/usr/local/bin/apache2-foreground" <<'EOF'
#!/bin/bash
set -e
# Apache in the foreground as PID 1, as the official php:*-apache images start it.
: "${APACHE_CONFDIR:=/etc/apache2}"
: "${APACHE_ENVVARS:=$APACHE_CONFDIR/envvars}"
if test -f "$APACHE_ENVVARS"; then
	. "$APACHE_ENVVARS"
fi
# Apache refuses to start over a stale pid file (a restarted container keeps its filesystem).
: "${APACHE_RUN_DIR:=/var/run/apache2}"
: "${APACHE_PID_FILE:=$APACHE_RUN_DIR/apache2.pid}"
rm -f "$APACHE_PID_FILE"
# The run, lock and log dirs, wherever the environment moved them.
for e in "${!APACHE_@}"; do
	if [[ "$e" == *_DIR ]] && [[ "${!e}" == /* ]]; then
		mkdir -p "${!e}"
	fi
done
exec apache2 -DFOREGROUND "$@"
EOF
cat > "$root/usr/local/bin/docker-php-entrypoint" <<'EOF'
#!/bin/sh
set -e
# As the official image: `docker run IMAGE -DFOO` passes the flags to apache2-foreground.
if [ "${1#-}" != "$1" ]; then
	set -- apache2-foreground "$@"
fi
exec "$@"
EOF
chmod 755 "$root/usr/local/bin/apache2-foreground" "$root/usr/local/bin/docker-php-entrypoint"
HOOK

mmdebstrap --quiet --variant=essential --skip=cleanup/run \
  --include=apache2,libapache2-mod-php,php-cli,php-curl,php-mbstring,php-xml,php-sqlite3 \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --customize-hook="bash $work/customize \"\$1\"" \
  "$suite" "$work/rootfs.tar"

# Loaded as a one-layer image rather than with `docker import`, whose --change knows no STOPSIGNAL before
# Docker 23: the same rootfs tar, with a config written here.
mkdir "$work/image"
ln "$work/rootfs.tar" "$work/image/layer.tar"
now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
cat > "$work/config.json" <<EOF
{"architecture":"$(docker version --format '{{.Server.Arch}}')","os":"linux","created":"$now",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","APACHE_DOCUMENT_ROOT=/var/www/html"],
  "Entrypoint":["docker-php-entrypoint"],"Cmd":["apache2-foreground"],"ExposedPorts":{"80/tcp":{}},
  "WorkingDir":"/var/www/html","StopSignal":"SIGWINCH"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$(sha256sum < "$work/rootfs.tar" | cut -d' ' -f1)"]},
 "history":[{"created":"$now","created_by":"reconciler/demo/images/php.sh (mmdebstrap $suite)"}]}
EOF
config="$(sha256sum < "$work/config.json" | cut -d' ' -f1)"
mv "$work/config.json" "$work/image/$config.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]\n' "$config" "$image" > "$work/image/manifest.json"
tar -C "$work/image" -c manifest.json "$config.json" layer.tar | docker load >/dev/null
echo "$image"
