<?php
// A CodeIgniter-3-style front controller standing in for erangel's: it loads
// application/config/production/config.php on every request (as CodeIgniter does) and forwards
// /<service>/<path> to $config['<service>_url'] (as erangel's controllers do with their HTTP client).
// Apache's mod_rewrite sends every path that is not a file here (.htaccess beside it).
define('BASEPATH', __DIR__ . '/system/');
define('ENVIRONMENT', 'production');
$config = array();
require __DIR__ . '/application/config/' . ENVIRONMENT . '/config.php';
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$parts = explode('/', trim($path, '/'), 2);
$service = $parts[0];
if ($service === '') { echo "gateway base_url=" . var_export($config['base_url'] ?? null, true) . "\n"; return; }
$key = $service . '_url';
if (!isset($config[$key]) || $config[$key] === '') { http_response_code(404); echo "no route for $service\n"; return; }
$body = @file_get_contents(rtrim($config[$key], '/') . '/' . ($parts[1] ?? ''));
if ($body === false) { http_response_code(502); echo "upstream $service failed\n"; return; }
echo $body;
