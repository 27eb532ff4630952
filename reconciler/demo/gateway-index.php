<?php
require __DIR__ . '/application/config/production/config.php';
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$parts = explode('/', trim($path, '/'), 2);
$service = $parts[0];
if ($service === '') { echo "gateway\n"; return; }
$key = $service . '_url';
if (!isset($config[$key])) { http_response_code(404); echo "no route for $service\n"; return; }
$body = @file_get_contents(rtrim($config[$key], '/') . '/' . ($parts[1] ?? ''));
if ($body === false) { http_response_code(502); echo "upstream $service failed\n"; return; }
echo $body;
